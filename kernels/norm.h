// LayerNorm and RMSNorm over the last dimension, forward and backward.
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// x, y: [rows, C] (any leading dims, flattened); weight, bias: [C] (bias may be
// undefined). Saves mean and rstd ([rows]) for the backward pass.
void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps,
                       Tensor& y, Tensor& mean, Tensor& rstd);
// dx assigned; dweight, dbias accumulated (undefined: skipped).
void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias);

// y = x * rsqrt(mean(x^2) + eps) * weight (Llama's RMSNorm); saves rstd ([rows]).
void rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                      Tensor& dx, Tensor& dweight);

}  // namespace anvil::kernels
