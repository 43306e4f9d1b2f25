// Merging a LoRA adapter into a quantized base weight (issue 17), two ways:
//
//   merge_qa_lora      QA-LoRA's exact merge (ALGORITHMS.md §9). The adapter reads x pooled over the
//                      base's quantization groups, so its ΔW is constant within each group of each row,
//                      and a per-group constant folds into the zero point: with ŵ = s·(q − z),
//                      ŵ + ΔW = s·(q − z'), z' = z − ΔW/s. The codes and scales stay; only the f32
//                      zeros change (and become fractional, possibly outside [0, qmax] — fine in
//                      anvil's format, which is why zeros are f32; GPTQ's integer qzeros cannot hold
//                      them, so data/quant_checkpoint's write_gptq refuses such a weight).
//   requantize_merged  What users do with a QLoRA/GPTQ adapter (peft merge_and_unload on a 4-bit
//                      base): dequantize, add ΔW, quantize again with the base's scheme and block
//                      (double quantization as the base has it). Every weight moves to the 2^b grid
//                      again, so it loses about what a fresh quantization loses — the baseline the
//                      exact merge is measured against.
//
// Both work on whole (unsharded) weights on the CPU, as an export step does.
#pragma once
#include <string>

#include "kernels/quant.h"
#include "models/lora.h"

namespace anvil {

// A QuantizedWeight sharing `base`'s packed codes and scales, with zeros z' = z − ΔW_group / s (f32)
// so that dequantize(merged) == dequantize(base) + adapter.delta_weight() up to f32 rounding.
// Throws naming `what` (the module) on an nf4 base (no zero points), a plain LoRA adapter
// (qa_group 0: its ΔW is not constant within a group), qa_group != base.block, shapes that do not
// match, a sharded adapter or a base off the CPU.
kernels::QuantizedWeight merge_qa_lora(const kernels::QuantizedWeight& base, const LoraAdapter& adapter,
                                       const std::string& what);

// dequantize(base) + delta [out, in], quantized again with base's scheme, block and (nf4) double
// quantization. `delta` is any float tensor (f32 on the CPU is used as is).
kernels::QuantizedWeight requantize_merged(const kernels::QuantizedWeight& base, const Tensor& delta,
                                           const std::string& what);

// How far a merged weight's output y' = x·Ŵ'ᵀ is from the adapter model's y = x·Ŵᵀ + Δy (base
// quantized, adapter applied as in evaluation: no dropout) over the rows of x [rows, in], both in
// f32 through kernels::quant_matmul. max_rel is max_abs / max|y| (0 when both are all zero):
// relative to the output's scale, since an element of y may be near zero.
struct MergeError {
  double max_abs = 0.0;
  double max_rel = 0.0;
};
MergeError merge_output_error(const kernels::QuantizedWeight& merged, const kernels::QuantizedWeight& base,
                              const LoraAdapter& adapter, const Tensor& x);

}  // namespace anvil
