// LinearWeight: the one place a linear layer's weight lives, and the one implementation of
// its forward (y = x W^T + b), input gradient (dx = dy W) and weight gradient (dW += dy^T x).
// Linear, ColumnParallelLinear and RowParallelLinear wrap it with their collectives.
//
// Today the weight is a dense Param [out, in] (owned, or another module's, for a tied head)
// with an optional dense bias. The next issues add, behind the same calls: a frozen quantized
// weight (packed integers + scales/zeros, Params that are not dense floats, Init::Keep) and
// an optional LoRA adapter (A ~ Normal, B = Zeros) whose product joins the forward and whose
// params are then the only trainable ones. merged() is the dense float weight export needs.
#pragma once
#include <string>
#include <vector>

#include "core/param.h"

namespace anvil {

class LinearWeight {
 public:
  // A dense weight [out, in] of zeros (init_weights fills it by `init`) and, when `bias`, a
  // bias [out] of zeros (Init::Zeros).
  LinearWeight(const std::string& name, int64_t out_features, int64_t in_features, bool bias,
               Init init = Init::Normal);
  // Reads another module's weight (the tied LM head on the embedding): owns no params, and
  // its gradient accumulates into that param's.
  explicit LinearWeight(Param& tied);
  // Not copyable: a tied weight points into another module.
  LinearWeight(const LinearWeight&) = delete;
  LinearWeight& operator=(const LinearWeight&) = delete;

  int64_t out_features() const { return weight().value.size(0); }
  int64_t in_features() const { return weight().value.size(1); }
  bool has_bias() const { return bias_.value.defined(); }

  // x [..., in] as a contiguous [rows, in] matrix, after checking its last dim.
  Tensor input_matrix(const Tensor& x) const;
  // y [rows, out] = x2 W^T, plus the bias when `with_bias` (a row-parallel layer adds it
  // after its reduction, with add_bias).
  Tensor forward(const Tensor& x2, bool with_bias = true) const;
  void add_bias(Tensor& y) const;
  // dx [rows, in] = dy2 W for dy2 [rows, out].
  Tensor input_grad(const Tensor& dy2) const;
  // dW += dy2^T x2 and db += sum of dy2's rows, for the params that train.
  void accumulate_grads(const Tensor& dy2, const Tensor& x2);

  // The dense float weight [out, in] (a quantized weight dequantized, an adapter merged in).
  Tensor merged() const;

  Param& weight() { return tied_ ? *tied_ : weight_; }
  const Param& weight() const { return tied_ ? *tied_ : weight_; }
  Param& bias() { return bias_; }
  const Param& bias() const { return bias_; }
  bool tied() const { return tied_ != nullptr; }
  void collect_params(std::vector<Param*>& out);  // weight (unless tied), then bias

 private:
  Param weight_;  // undefined when tied
  Param bias_;    // undefined without bias
  Param* tied_ = nullptr;
};

}  // namespace anvil
