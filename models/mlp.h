// The dense feed-forward sub-block: GPT-2's GELU MLP (c_fc, c_proj) or Llama's SwiGLU
// (gate_proj, up_proj, down_proj); names from models/family.h's mlp_names.
#pragma once
#include <optional>

#include "models/block_parts.h"
#include "models/layers.h"
#include "models/tensor_parallel_layers.h"

namespace anvil {

class MLP : public FeedForward {
 public:
  // With a tp communicator the intermediate dim is split: c_fc / gate_proj / up_proj
  // column-parallel, c_proj / down_proj row-parallel (one all-reduce forward, one backward).
  // The down projection writes into the residual stream: Init::ResidualNormal.
  MLP(const std::string& prefix, int64_t hidden, int64_t intermediate, bool gated, bool bias,
      Communicator* tp = nullptr);
  Tensor forward(const Tensor& x, Cache& c) override;
  Tensor backward(const Tensor& dy, Cache& c) override;
  Tensor infer(const Tensor& x) override;  // forward without saving anything
  void collect_params(std::vector<Param*>& out) override;
  void collect_linears(std::vector<LinearWeight*>& out) override;
  // Its input, the intermediate activations (gate and up | pre-GELU) and the down projection's input.
  size_t activation_bytes(const ActivationDims& d) const override;

  bool gated() const { return gate_.has_value(); }

 private:
  std::optional<ColumnParallelLinear> fc_;         // GELU: c_fc
  std::optional<ColumnParallelLinear> gate_, up_;  // SwiGLU: gate_proj, up_proj
  RowParallelLinear down_;                         // c_proj / down_proj
};

}  // namespace anvil
