// A pre-norm transformer block built from a spec (Megatron's ModuleSpec idea):
//   h = x + attention(norm1(x));  y = h + feed_forward(norm2(h))
// each slot filled by a factory of a BlockSpec, with an optional gate around each sub-block
// (x + w * f(x), models/block_parts.h). GPT-2, Llama, Qwen2 and Mistral all use
// dense_block_spec(), which reads the family table (models/family.h) for the norm kind,
// the attention's projection layout and the MLP kind; an MoE layer is a FeedForward class
// and a spec whose feed_forward factory builds it.
#pragma once
#include <functional>
#include <memory>

#include "models/attention.h"
#include "models/block_parts.h"
#include "models/config.h"
#include "models/family.h"
#include "models/mlp.h"

namespace anvil {

// What a slot's factory gets: the block's parameter-name prefix ("transformer.h.3",
// "model.layers.3"), the model's config and family row, and the shared parts of the model.
struct BlockContext {
  std::string prefix;
  const ModelConfig& config;
  const Family& family;
  std::shared_ptr<const RopeTables> rope;  // null with learned positions
  Communicator* tp = nullptr;              // tensor parallel: attention and feed-forward split
  std::shared_ptr<const SequenceParallelContext> sequence;  // Ulysses sequence parallel, or null
  int64_t layer = -1;  // the block's global layer index (-1: a block built by hand)
};

enum class SubBlock { Attention, FeedForward };
// Empty, or returns a gate (or nullptr: that sub-block is not gated).
using BlockGateFactory = std::function<std::unique_ptr<BlockGate>(const BlockContext&, SubBlock)>;

// Token rows each sub-block computed vs. the rows it would compute without skipping (layer-skip
// routers run a sub-block on the active rows only), summed over forwards since the last reset.
struct RoutedRows {
  int64_t attention_run = 0, attention_total = 0;
  int64_t mlp_run = 0, mlp_total = 0;
  RoutedRows& operator+=(const RoutedRows& o);
};

struct BlockSpec {
  // `name`: the norm's full parameter-name prefix (e.g. "model.layers.3.input_layernorm").
  std::function<std::unique_ptr<Module>(const std::string& name, const BlockContext&)> norm;
  std::function<std::unique_ptr<Attention>(const BlockContext&)> attention;
  std::function<std::unique_ptr<FeedForward>(const BlockContext&)> feed_forward;
  BlockGateFactory gate;
};

// The family's norm, its attention layout, the dense MLP (gated or not); no gates.
BlockSpec dense_block_spec();
// The spec a config asks for (dense today; MoE configs will choose theirs here).
BlockSpec block_spec(const ModelConfig& config);

class TransformerBlock : public Module {
 public:
  TransformerBlock(const BlockSpec& spec, const BlockContext& context);
  // block_spec(config)'s block. With a tp communicator attention and feed-forward are
  // tensor-parallel; the norms and residuals stay replicated. With a `sequence` context
  // attention is Ulysses sequence-parallel; everything else is token-local.
  TransformerBlock(const std::string& prefix, const ModelConfig& config, std::shared_ptr<const RopeTables> rope,
                   Communicator* tp = nullptr, std::shared_ptr<const SequenceParallelContext> sequence = nullptr);
  Tensor forward(const Tensor& x, Cache& c) override;
  Tensor backward(const Tensor& dy, Cache& c) override;
  // Inference for positions start_pos .. start_pos + T - 1 of x [B, T, hidden],
  // appending their keys/values to this layer's KV cache; saves nothing.
  Tensor forward_cached(const Tensor& x, KVLayer& kv, int64_t start_pos);
  void collect_params(std::vector<Param*>& out) override;
  void collect_linears(std::vector<LinearWeight*>& out) override;
  // The sum of its parts', plus each gated sub-block's output and weights (kept for the gate's gradient).
  size_t activation_bytes(const ActivationDims& d) const override;
  // The params of its hard gates (layer-skip routers), appended to out.
  void collect_router_params(std::vector<Param*>& out);
  RoutedRows routed_rows() const { return counts_; }
  void reset_routed_rows() { counts_ = {}; }
  // The gate on a sub-block's slot (null: ungated).
  BlockGate* gate(SubBlock sub) const { return gates_[sub == SubBlock::Attention ? 0 : 1].get(); }

 private:
  // x + f (written over f), or x + w * f through the sub-block's gate (saving f and w).
  Tensor residual(const Tensor& x, Tensor f, int sub, Cache& c);
  // The gradient that enters sub-block f from the residual's dy (dy itself without a gate).
  Tensor residual_backward(const Tensor& dy, int sub, Cache& c, Tensor& dx_gate);
  std::unique_ptr<Module> norm1_, norm2_;
  std::unique_ptr<Attention> attn_;
  std::unique_ptr<FeedForward> ff_;
  // ---- Layer-skip routing (hard gates, models/block_routing.cpp) ----
  // The hard gate deciding sub-block `sub` (0 attention, 1 feed-forward): its own, or for the
  // feed-forward the attention's when that one covers the whole block; null when not routed.
  BlockGate* router(int sub) const;
  // Whether this training forward runs sub-block `sub` densely under its gate (RouterSpec::train_skipped).
  bool trains_skipped(int sub, const BlockGate& gate, const Cache& c) const;
  // Whether this training forward, skipping a token-unit attention for real, also runs a dense probe
  // for the skipped tokens' dL/dg (RouterSpec::train_skipped on a token-unit attention).
  bool probes_skipped(int sub, const BlockGate& gate, const Cache& c) const;
  Tensor sub_forward(int sub, const Tensor& n, Cache& c);
  Tensor sub_backward(int sub, const Tensor& dn, Cache& c);
  // norm, gate, the sub-block on the active rows only, residual: x + g f(norm(x)).
  Tensor routed_forward(int sub, const Tensor& x, Cache& c);
  Tensor routed_backward(int sub, const Tensor& dy, Cache& c);
  Tensor routed_forward_cached(const Tensor& x, KVLayer& kv, int64_t start_pos);
  // The gates [B, T] of sub-block `sub` for a cached call (sequence unit: the row's decision
  // taken at its first call, remembered in kv.route).
  Tensor cached_gates(int sub, const Tensor& n, KVLayer& kv);
  Tensor cached_attention(const Tensor& x, const Tensor& n, const Tensor& g, KVLayer& kv, int64_t start_pos);
  void count(int sub, int64_t run, int64_t total);
  std::unique_ptr<BlockGate> gates_[2];  // around attention, feed-forward; null = ungated
  bool routed_ = false;                  // a hard gate on either slot
  RoutedRows counts_;
};

// The norm a family uses: LayerNorm (GPT-2) or RMSNorm (Llama), from the family table.
std::unique_ptr<Module> make_norm(const std::string& name, const ModelConfig& config);

}  // namespace anvil
