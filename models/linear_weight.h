// LinearWeight: the one place a linear layer's weight lives, and the one implementation of
// its forward (y = x W^T + b), input gradient (dx = dy W) and weight gradient (dW += dy^T x).
// Linear, ColumnParallelLinear and RowParallelLinear wrap it with their collectives.
//
// The weight is a dense Param [out, in] (owned, or another module's, for a tied head), or a frozen
// quantized weight (set_quantized: packed codes and their scales as Params that keep their integer
// or f32 dtype, products through kernels/quant.h), with an optional dense bias and an optional LoRA
// adapter (models/lora.h, attach_lora) whose product joins the forward and its dx part the input
// gradient, whatever the base is. merged() is the dense float weight export needs.
//
// A quantized weight's params, each a logical tensor sharded like the dense weight was, so a
// checkpoint holds the same integer datasets under every layout:
//   <module>.weight                 u8 [out, in·bits/8]  the packed codes (kernels/quant.h's order)
//   <module>.weight.absmax          f32 [out, in/block]  nf4 without double quantization
//   <module>.weight.absmax_codes    u8 [out·in/block]    nf4 double-quantized (replicated: bitsandbytes'
//   <module>.weight.absmax_scales   f32 [⌈out·in/block/256⌉]   nested blocks run over the whole
//   <module>.weight.absmax_offset   f32 [1]               flattened tensor, not a shard)
//   <module>.weight.scales, .zeros  f32 [out, in/block]  int4 / int2
//   <module>.weight.perm            i32 [in]             GPTQ act order: y = x[:, perm]·Ŵᵀ
// A shard of a double-quantized weight computes with its blocks' absmaxes decoded to f32 (a cache,
// not a param: 0.5 bit per weight more than the 0.127 of one process).
//
// The DropoutKey arguments carry the micro-batch's StepContext::dropout to the adapter (inactive:
// no dropout, as in evaluation and inference); `tp` is the communicator the weight is split over,
// which the adapter's replicated factor sums its gradient over.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/param.h"
#include "kernels/quant.h"
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
  ~LinearWeight();
  // Not copyable: a tied weight points into another module.
  LinearWeight(const LinearWeight&) = delete;
  LinearWeight& operator=(const LinearWeight&) = delete;

  int64_t out_features() const { return quant_ ? quant_out_ : weight().value.size(0); }
  int64_t in_features() const { return quant_ ? quant_in_ : weight().value.size(1); }
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

  // Replaces the dense weight by `full`, the quantization of the whole logical weight [out, in]
  // (on the CPU), and releases the dense value. This rank keeps its shard, split as the dense weight
  // was; a split that cuts a quantization group throws naming the module and the fix. `perm`
  // (i32 [in], optional): GPTQ act order's input order; a weight split along `in` cannot take one.
  // The new params are frozen and Init::Keep. Throws for a tied weight or one quantized already.
  void set_quantized(const kernels::QuantizedWeight& full, const Tensor& perm = Tensor());
  bool quantized() const { return quant_ != nullptr; }
  // This rank's quantized weight as the kernels read it (views of the params; the decoded-absmax
  // cache on their device for a split double-quantized one). Only when quantized().
  kernels::QuantizedWeight quantized_weight() const;
  // GPTQ act order's perm (i32 [in]); undefined without act order.
  const Tensor& quantized_perm() const;

  Param& weight() { return tied_ ? *tied_ : weight_; }
  const Param& weight() const { return tied_ ? *tied_ : weight_; }
  Param& bias() { return bias_; }
  const Param& bias() const { return bias_; }
  bool tied() const { return tied_ != nullptr; }
  // weight (unless tied; quantized: the packed codes), bias, the quantized weight's other params,
  // then lora_A, lora_B
  void collect_params(std::vector<Param*>& out);

 private:
  Param weight_;  // undefined when tied
  Param bias_;    // undefined without bias
  Param* tied_ = nullptr;
  std::unique_ptr<LoraAdapter> lora_;
  struct Quantized;  // linear_weight.cpp
  std::unique_ptr<Quantized> quant_;
  int64_t quant_out_ = 0, quant_in_ = 0;  // the local shape of a quantized weight
};

}  // namespace anvil
