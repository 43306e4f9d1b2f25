// A pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(.)).
#pragma once
#include <memory>

#include "models/attention.h"
#include "models/config.h"
#include "models/mlp.h"

namespace anvil {

class TransformerBlock : public Module {
 public:
  // prefix: "transformer.h.3" (GPT-2) or "model.layers.3" (Llama). With a tp communicator
  // attention and MLP are tensor-parallel; the norms and residuals stay replicated. With a
  // `sequence` context attention is Ulysses sequence-parallel; everything else is token-local.
  TransformerBlock(const std::string& prefix, const ModelConfig& config, std::shared_ptr<const RopeTables> rope,
                   Communicator* tp = nullptr, std::shared_ptr<const SequenceParallelContext> sequence = nullptr);
  Tensor forward(const Tensor& x, Cache& c) override;
  Tensor backward(const Tensor& dy, Cache& c) override;
  // Inference for positions start_pos .. start_pos + T - 1 of x [B, T, hidden],
  // appending their keys/values to this layer's KV cache; saves nothing.
  Tensor forward_cached(const Tensor& x, KVLayer& kv, int64_t start_pos);
  void collect_params(std::vector<Param*>& out) override;

 private:
  std::unique_ptr<Module> norm1_, norm2_;
  Attention attn_;
  MLP mlp_;
};

// The norm a family uses: LayerNorm (GPT-2) or RMSNorm (Llama).
std::unique_ptr<Module> make_norm(const std::string& name, const ModelConfig& config);

}  // namespace anvil
