// Small elementwise kernels on row-strided matrix stacks that the cuBLASLt wrappers
// (kernels/cuda/matmul.cpp) need around a GEMM: C = beta * C when K = 0, and the bias /
// GELU epilogue when cuBLASLt cannot fuse it. Internal to kernels/cuda.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace anvil::kernels::cuda::detail {

// `batch` row-major [rows, cols] matrices of f32 or bf16: element (i, r, j) at
// p + i * batch_stride + r * ld + j (in elements).
struct MatrixView {
  void* p = nullptr;
  DType dtype = DType::F32;
  int64_t batch = 1, rows = 0, cols = 0, ld = 0, batch_stride = 0;
};

// c = beta * c; beta = 0 writes zeros even over NaN (BLAS semantics).
void scale_matrices(const MatrixView& c, float beta, cudaStream_t stream);

// pre = c + bias (when pre is non-null), then c = gelu(c + bias) if `gelu`, else c + bias.
// bias: `cols` contiguous f32 or bf16 values, broadcast over rows and batches.
void bias_activation(const MatrixView& c, const void* bias, DType bias_dtype, bool gelu, const MatrixView* pre,
                     cudaStream_t stream);

}  // namespace anvil::kernels::cuda::detail
