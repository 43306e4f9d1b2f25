// Inverted dropout whose mask is drawn per logical element from counter-based Philox (core/rng.h),
// so any parallel layout, and a backward that regenerates the mask instead of storing it, draws
// the same mask for the same element.
#pragma once
#include <cstdint>
#include <functional>

#include "core/rng.h"
#include "core/tensor.h"

namespace anvil::kernels {

// Where the elements of a local [rows, cols] matrix lie in the logical one: local (r, c) is
// logical (row_of(r), first_col + c) of a matrix with logical_cols columns, and its draw is
// rng.uniform(row_of(r) * logical_cols + first_col + c).
struct DropoutLayout {
  std::function<int64_t(int64_t)> row_of;
  int64_t first_col = 0;
  int64_t logical_cols = 0;
};

// x[r, c] <- u >= p ? x[r, c] · (1 / (1 − p)) : 0 for x [rows, cols] (contiguous), 0 <= p < 1.
// CPU: f32. CUDA (kernels/cuda/dropout.cu): f32 or bf16 (the product rounded once to bf16), the
// same draws and mask bit for bit; row_of is evaluated on the host and the rows' first indices
// copied to the device.
void dropout_inplace(Tensor& x, float p, const PhiloxStream& rng, const DropoutLayout& layout, const char* what);
// The device-independent argument checks (shape, p, columns), naming `what`; both backends call it.
void require_dropout_args(const Tensor& x, float p, const DropoutLayout& layout, const char* what);

}  // namespace anvil::kernels
