// Fused optimizer updates: one pass over param, grad and state per element.
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

struct AdamWStep {
  float lr = 1e-3f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled: param *= 1 - lr * weight_decay, before the Adam step
  int64_t step = 1;           // 1-based, for bias correction
};

// PyTorch AdamW semantics (eps added after bias correction):
//   p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
void adamw_update(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWStep& s);
// Mixed precision: `param` is the f32 master weight; in the same pass the updated value,
// rounded to low_precision's dtype (bf16), is written to low_precision, the copy the model
// computes with. Undefined low_precision: the plain update above.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWStep& s,
                  Tensor& low_precision);

}  // namespace anvil::kernels
