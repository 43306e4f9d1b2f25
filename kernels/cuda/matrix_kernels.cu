// Elementwise passes over row-strided matrix stacks for the GEMM wrappers (see
// matrix_kernels.h). One thread per element, a grid-stride loop over the flat index.
#include <cuda_bf16.h>

#include "core/cuda/runtime.h"
#include "kernels/cuda/matrix_kernels.h"

namespace anvil::kernels::cuda::detail {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float load(const void* p, DType dt, int64_t i) {
  return dt == DType::BF16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]) : static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void store(void* p, DType dt, int64_t i, float v) {
  if (dt == DType::BF16) static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else static_cast<float*>(p)[i] = v;
}

// Element offset of flat index e (batch-major, then rows, then cols).
__device__ __forceinline__ int64_t offset_of(const MatrixView& m, int64_t e) {
  const int64_t j = e % m.cols, r = (e / m.cols) % m.rows, b = e / (m.cols * m.rows);
  return b * m.batch_stride + r * m.ld + j;
}

__global__ void scale_kernel(MatrixView c, float beta, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = offset_of(c, e);
    store(c.p, c.dtype, o, beta == 0.0f ? 0.0f : beta * load(c.p, c.dtype, o));
  }
}

// GELU, tanh approximation (kernels/activation.h), as cuBLASLt's GELU epilogue.
__device__ __forceinline__ float gelu(float x) {
  const float k0 = 0.7978845608028654f, k1 = 0.044715f;
  return 0.5f * x * (1.0f + tanhf(k0 * (x + k1 * x * x * x)));
}

__global__ void bias_activation_kernel(MatrixView c, const void* bias, DType bias_dtype, bool use_gelu, MatrixView pre,
                                       bool has_pre, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = offset_of(c, e);
    const float x = load(c.p, c.dtype, o) + load(bias, bias_dtype, e % c.cols);
    if (has_pre) store(pre.p, pre.dtype, offset_of(pre, e), x);
    store(c.p, c.dtype, o, use_gelu ? gelu(x) : x);
  }
}

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65536 ? b : 65536);  // grid-stride loop covers the rest
}

}  // namespace

void scale_matrices(const MatrixView& c, float beta, cudaStream_t stream) {
  const int64_t n = c.batch * c.rows * c.cols;
  if (n == 0 || beta == 1.0f) return;
  scale_kernel<<<blocks_for(n), kThreads, 0, stream>>>(c, beta, n);
  ANVIL_CUDA_CHECK_LAUNCH();
}

void bias_activation(const MatrixView& c, const void* bias, DType bias_dtype, bool gelu, const MatrixView* pre,
                     cudaStream_t stream) {
  const int64_t n = c.batch * c.rows * c.cols;
  if (n == 0) return;
  bias_activation_kernel<<<blocks_for(n), kThreads, 0, stream>>>(c, bias, bias_dtype, gelu, pre ? *pre : MatrixView{},
                                                                 pre != nullptr, n);
  ANVIL_CUDA_CHECK_LAUNCH();
}

}  // namespace anvil::kernels::cuda::detail
