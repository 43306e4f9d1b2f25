#include "kernels/dropout.h"

#include "kernels/backend.h"
#include "kernels/cpu/common.h"

namespace anvil::kernels {

void require_dropout_args(const Tensor& x, float p, const DropoutLayout& layout, const char* what) {
  ANVIL_CHECK(x.dim() == 2 && x.is_contiguous(), what, ": dropout needs a contiguous matrix, got ", x.describe());
  ANVIL_CHECK(p >= 0.0f && p < 1.0f, what, ": dropout probability ", p, " is outside [0, 1)");
  const int64_t cols = x.size(1);
  ANVIL_CHECK(layout.first_col >= 0 && layout.first_col + cols <= layout.logical_cols, what, ": columns [",
              layout.first_col, ", ", layout.first_col + cols, ") lie outside the logical ", layout.logical_cols);
}

void dropout_inplace(Tensor& x, float p, const PhiloxStream& rng, const DropoutLayout& layout, const char* what) {
  ANVIL_DISPATCH_CUDA(x, dropout_inplace, x, p, rng, layout, what);
  require_dropout_args(x, p, layout, what);
  ANVIL_CHECK(x.device().is_cpu(), what, ": dropout on ", x.describe(), " needs a build with the CUDA backend");
  ANVIL_CHECK(x.dtype() == DType::F32, what, ": dropout on the CPU needs an f32 matrix, got ", x.describe());
  const int64_t rows = x.size(0), cols = x.size(1);
  const float keep_scale = 1.0f / (1.0f - p);
  float* px = x.data<float>();
#pragma omp parallel for schedule(static) if (rows * cols > cpu::kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t base = static_cast<uint64_t>(layout.row_of(r) * layout.logical_cols + layout.first_col);
    float* row = px + r * cols;
    for (int64_t c = 0; c < cols; ++c) row[c] = rng.uniform(base + c) >= p ? row[c] * keep_scale : 0.0f;
  }
}

}  // namespace anvil::kernels
