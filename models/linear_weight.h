// LinearWeight: the one place a linear layer's weight lives, and the one implementation of
// its forward (y = x W^T + b), input gradient (dx = dy W) and weight gradient (dW += dy^T x).
// Linear, ColumnParallelLinear and RowParallelLinear wrap it with their collectives.
//
// Today the weight is a dense Param [out, in] (owned, or another module's, for a tied head)
// with an optional dense bias, and an optional LoRA adapter (models/lora.h, attach_lora) whose
// product joins the forward and its dx part the input gradient, whatever the base is. The next
// issue adds, behind the same calls, a frozen quantized weight (packed integers + scales/zeros,
// Params that are not dense floats, Init::Keep). merged() is the dense float weight export needs.
//
// The DropoutKey arguments carry the micro-batch's StepContext::dropout to the adapter (inactive:
// no dropout, as in evaluation and inference); `tp` is the communicator the weight is split over,
// which the adapter's replicated factor sums its gradient over.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/param.h"
#include "models/lora.h"

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
  // y [rows, out] = x2 W^T (+ the adapter's s B A drop(x̃)), plus the bias when `with_bias` (a
  // row-parallel layer adds it after its reduction, with add_bias; its partial products, the
  // adapter's included, sum to the whole).
  Tensor forward(const Tensor& x2, bool with_bias = true, const DropoutKey& key = DropoutKey()) const;
  void add_bias(Tensor& y) const;
  // dx [rows, in] = dy2 W (+ the adapter's part) for dy2 [rows, out].
  Tensor input_grad(const Tensor& dy2, const DropoutKey& key = DropoutKey()) const;
  // dW += dy2^T x2 and db += sum of dy2's rows, and the adapter's gradients, for the params that train.
  void accumulate_grads(const Tensor& dy2, const Tensor& x2, const DropoutKey& key = DropoutKey(),
                        Communicator* tp = nullptr);

  // Attaches a LoRA adapter (its params zero until init_params; the base is left as it is).
  // Throws for a tied weight or a second adapter.
  LoraAdapter& attach_lora(const LoraSpec& spec);
  LoraAdapter* lora() { return lora_.get(); }
  const LoraAdapter* lora() const { return lora_.get(); }
  // The layer's HF module name: the weight's name less ".weight" (model.layers.0.self_attn.q_proj).
  std::string module_name() const;

  // The dense float weight [out, in] (a quantized weight dequantized, an adapter merged in).
  Tensor merged() const;

  Param& weight() { return tied_ ? *tied_ : weight_; }
  const Param& weight() const { return tied_ ? *tied_ : weight_; }
  Param& bias() { return bias_; }
  const Param& bias() const { return bias_; }
  bool tied() const { return tied_ != nullptr; }
  void collect_params(std::vector<Param*>& out);  // weight (unless tied), bias, then lora_A, lora_B

 private:
  Param weight_;  // undefined when tied
  Param bias_;    // undefined without bias
  Param* tied_ = nullptr;
  std::unique_ptr<LoraAdapter> lora_;
};

}  // namespace anvil
