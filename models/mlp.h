// The feed-forward block: GPT-2's GELU MLP (c_fc, c_proj) or Llama's SwiGLU
// (gate_proj, up_proj, down_proj).
#pragma once
#include <optional>

#include "models/layers.h"

namespace anvil {

class MLP : public Module {
 public:
  MLP(const std::string& prefix, int64_t hidden, int64_t intermediate, bool gated, bool bias);
  Tensor forward(const Tensor& x, Cache& c) override;
  Tensor backward(const Tensor& dy, Cache& c) override;
  Tensor infer(const Tensor& x) override;  // forward without saving anything
  void collect_params(std::vector<Param*>& out) override;

  bool gated() const { return gate_.has_value(); }

 private:
  std::optional<Linear> fc_;           // GELU: c_fc
  std::optional<Linear> gate_, up_;    // SwiGLU: gate_proj, up_proj
  Linear down_;                        // c_proj / down_proj
};

}  // namespace anvil
