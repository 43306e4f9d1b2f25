// LoRA adapter of one linear layer (Hu et al. 2021; PEFT's lora.Linear), owned by its
// LinearWeight. The adapter adds  Δy = s · B · A · drop(x̃)  to whatever the base weight produces
// (dense now, quantized later: it never reads the base), with
//   A [r, in] Kaiming-uniform (PEFT: kaiming_uniform_(a=√5), bound 1/√in), B [out, r] zeros,
//   s = α/r, or α/√r with rsLoRA;
//   x̃ = x, or for QA-LoRA (qa_group g > 0) the input average-pooled over groups of g along `in`
//   (ALGORITHMS.md §9), A then [r, in/g];
//   drop: inverted dropout with probability p, training only (StepContext::dropout), drawn from
//   Philox by logical element and regenerated in backward rather than stored (LinearWeight keeps
//   no cache), so every layout and every recompute drops the same elements.
// Params are named as PEFT's without `base_model.model.`: <module>.lora_A.weight, <module>.lora_B.weight.
//
// Under tensor parallelism the adapter follows its weight's split: a column-parallel weight (out
// split) shards B by the same rows and replicates A; a row-parallel one (in split) shards A along
// in (by whole pooling groups) and replicates B. The replicated factor's gradient is then a
// partial sum over tp (the other factor's product is split), which accumulate_grads sums over the
// communicator it is given.
#pragma once
#include <string>
#include <vector>

#include "core/param.h"
#include "models/step_context.h"

namespace anvil {

class Communicator;

struct LoraSpec {
  int64_t r = 64;
  double alpha = 16.0;
  double dropout = 0.0;  // [0, 1)
  bool rslora = false;   // scaling alpha / sqrt(r) instead of alpha / r
  int64_t qa_group = 0;  // > 0: QA-LoRA's pooling group g along `in`; 0: plain LoRA
  float scaling() const;
};

class LoraAdapter {
 public:
  // `module`: the layer's HF name (its weight is <module>.weight); `weight_shard`: the base weight's
  // split (local shape [out, in]), which the adapter's factors follow as described above.
  LoraAdapter(const std::string& module, int64_t out, int64_t in, const ShardSpec& weight_shard, const LoraSpec& spec);

  // y [rows, out] += s · B A drop(x̃) for x2 [rows, in].
  void add_forward(const Tensor& x2, Tensor& y, const DropoutKey& key) const;
  // dx [rows, in] += the adapter's part of the input gradient for dy2 [rows, out].
  void add_input_grad(const Tensor& dy2, Tensor& dx, const DropoutKey& key) const;
  // dA, dB += their gradients (for the factors that train). `tp`: the communicator over which the
  // replicated factor's gradient is a partial sum (the base weight is split over it); null when
  // the weight is whole.
  void accumulate_grads(const Tensor& dy2, const Tensor& x2, const DropoutKey& key, Communicator* tp);

  // The dense update ΔW [out, in] = s · B A (QA-LoRA: each group's column of BA spread over its g
  // inputs, divided by g), in f32, for merging into the base.
  Tensor delta_weight() const;

  const LoraSpec& spec() const { return spec_; }
  Param A;  // [r, in] (QA-LoRA: [r, in / g])
  Param B;  // [out, r]

 private:
  // The adapter's input drop(x̃) [rows, A's cols] for x2 [rows, in] (a view of x2 when nothing changes it).
  Tensor adapter_input(const Tensor& x2, const DropoutKey& key) const;
  // u <- drop(u) in place with this adapter's mask (the same for forward and backward).
  void apply_dropout(Tensor& u, const DropoutKey& key) const;
  const Tensor& pooling_vector(const Tensor& like) const;  // [g, 1] of 1/g on like's device and dtype

  LoraSpec spec_;
  float scaling_;
  mutable Tensor pool_;  // pooling_vector's cache
};

}  // namespace anvil
