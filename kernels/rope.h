// Rotary position embedding in the Hugging Face Llama convention (rotate_half:
// element i pairs with i + D/2), forward and backward.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace anvil::kernels {

// Inverse frequencies theta^(-2i/D) for i < D/2 (a rope_scaling variant can
// rewrite these before the table is built).
std::vector<float> rope_inv_freq(int64_t head_dim, double theta);
// cos and sin tables [max_positions, D/2]: angle(p, i) = p * inv_freq[i].
void rope_tables(const std::vector<float>& inv_freq, int64_t max_positions, Tensor& cos, Tensor& sin);

// x: [B, T, H, D] (last dim contiguous, other strides free), rotated in place for
// positions start_pos .. start_pos + T - 1:
//   out[i]       = x[i] cos - x[i + D/2] sin
//   out[i + D/2] = x[i + D/2] cos + x[i] sin
void rope_forward(Tensor& x, const Tensor& cos, const Tensor& sin, int64_t start_pos);
// The transpose of the rotation (rotation by -angle), applied in place to dx.
void rope_backward(Tensor& dx, const Tensor& cos, const Tensor& sin, int64_t start_pos);

// The same at explicit positions: token t of row b sits at positions[b, t] (i32 [B, T]) or, for
// every row alike, positions[t] (i32 [T]); contiguous, on x's device. Packed documents restart
// at 0, a decoded tree gives siblings one position. Every position must be a row of the tables:
// the CPU backend checks, the CUDA backend trusts the caller (the host that built them checks,
// see models/step_context.h). Same arithmetic per element as the start_pos form.
void rope_forward(Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions);
void rope_backward(Tensor& dx, const Tensor& cos, const Tensor& sin, const Tensor& positions);

}  // namespace anvil::kernels
