// The argument checks that the CPU and CUDA backends of one op share once each backend has
// checked device and dtype itself (as kernels/rows.h and kernels/matrix_layout.h do for row
// and matrix views): attention's problem dimensions and rope's head dim and positions.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace anvil::kernels {

// A checked attention call (kernels/attention.h): q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D].
struct AttentionDims {
  int64_t B = 0, Tq = 0, Tk = 0, Hq = 0, Hkv = 0, D = 0, group = 1;
  int64_t q_offset = 0;
  int64_t window = 0;  // 0: every earlier key; W > 0: only the last W positions
  float scale = 1.0f;
};

// The dims of q, k, v, each already checked to be a [B, T, H, D] tensor of the backend's
// device and dtype; throws naming op unless they agree (batch, head dim, k and v alike, Hq a
// multiple of Hkv), q_offset lies in [0, Tk - Tq], scale is finite and window >= 0.
AttentionDims attention_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                             int64_t q_offset, int64_t window);

// Rope's half head dim D/2 for x [B, T, H, D] (4-D, checked by the caller) and [max_positions,
// D/2] cos tables: throws naming op and xname unless D = 2 * cos.size(1), x's last dim is
// contiguous and positions start_pos .. start_pos + T - 1 are rows of the tables.
int64_t rope_half_dim(const char* op, const char* xname, const Tensor& x, const Tensor& cos, int64_t start_pos);

}  // namespace anvil::kernels
