// Newton–Schulz on CUDA (kernels/newton_schulz.h): the CPU iteration with cuBLASLt products
// (kernels::cuda::matmul) and a few elementwise kernels, all queued on the current stream with
// no host synchronisation (the Frobenius norm stays on the device).
//
// fp32 (cfg.bf16 = false): as the CPU — A = X X^T (wide) or X^T X (tall), B = b A + c A A
// and X = a X + B X (or X B), the scalings fused into the GEMMs' alpha/beta.
// bf16 (cfg.bf16 = true): the matrices are bf16 tensors and every GEMM writes bf16 (f32
// accumulation, one rounding), every elementwise op rounds its result, as torch evaluates the
// reference on bf16 CUDA tensors; summation order differs from the CPU's OpenBLAS, so the two
// agree to bf16 rounding, not bit for bit.
#include <cuda_bf16.h>

#include <cmath>
#include <type_traits>
#include <utility>

#include "core/cuda/runtime.h"
#include "kernels/cuda/device_check.h"
#include "kernels/cuda/ops.h"

namespace anvil::kernels::cuda {
namespace {

constexpr const char* kOp = "newton_schulz";
constexpr int kThreads = 256;
constexpr int kPartials = 1024;  // blocks of the sum-of-squares pass (a fixed count: deterministic)

__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

template <typename T>
__device__ __forceinline__ float load(const T* p, int64_t i);
template <>
__device__ __forceinline__ float load<float>(const float* p, int64_t i) { return p[i]; }
template <>
__device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}

// partial[blockIdx.x] = sum of x[i]^2 (in double) over a fixed grid-stride slice.
template <typename T>
__global__ void __launch_bounds__(kThreads) sum_squares_kernel(const T* x, int64_t n, double* partial) {
  __shared__ double s[kThreads];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const double v = load(x, i);
    acc += v * v;
  }
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// factor = the number X is multiplied by: 1 / (||G|| + eps) in fp32 mode; in bf16 mode the
// divisor round(round(||X||) + eps) (X then = round(X / divisor)), as the CPU emulation.
__global__ void __launch_bounds__(kThreads) norm_factor_kernel(const double* partial, int count, double eps,
                                                               bool bf16, float* factor) {
  __shared__ double s[kThreads];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += kThreads) acc += partial[i];
  s[threadIdx.x] = acc;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double norm = sqrt(s[0]);
    *factor = bf16 ? round_bf16(round_bf16(static_cast<float>(norm)) + static_cast<float>(eps))
                   : static_cast<float>(1.0 / (norm + eps));
  }
}

// out = g * factor (fp32).
__global__ void scale_kernel(const float* g, float* out, int64_t n, const float* factor) {
  const float f = *factor;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = g[i] * f;
}

// x = round(g) (bf16 from f32 or bf16 input).
template <typename T>
__global__ void to_bf16_kernel(const T* g, __nv_bfloat16* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = __float2bfloat16_rn(load(g, i));
}

// x = round(x / divisor).
__global__ void divide_bf16_kernel(__nv_bfloat16* x, int64_t n, const float* divisor) {
  const float dv = *divisor;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = __float2bfloat16_rn(__bfloat162float(x[i]) / dv);
}

// y = round(round(p * y) + round(q * x)) — B = round(round(b A) + round(c AA)) with y = A,
// x = AA; and X = round(round(a X) + Y) with y = X, x = Y, q = 1.
__global__ void combine_bf16_kernel(__nv_bfloat16* y, const __nv_bfloat16* x, float p, float q, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(round_bf16(p * __bfloat162float(y[i])) + round_bf16(q * __bfloat162float(x[i])));
}

unsigned blocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65536 ? b : 65536);
}

float round_bf16_host(double x) { return bf16_to_float(float_to_bf16(static_cast<float>(x))); }

}  // namespace

void newton_schulz(const Tensor& u, Tensor& out, const NewtonSchulzConfig& cfg) {
  const int device = detail::device_index(kOp, "u", u);
  ANVIL_CHECK(u.dtype() == DType::F32 || u.dtype() == DType::BF16, kOp, ": u is ", u.describe(),
              " but CUDA Newton–Schulz takes f32 or bf16");
  ANVIL_CHECK(u.dim() == 2, kOp, ": u is ", u.describe(),
              " but must be 2-D — view conv or stacked weights as [out, rest] first");
  ANVIL_CHECK(out.defined() && out.device() == u.device() && (out.dtype() == DType::F32 || out.dtype() == DType::BF16),
              kOp, ": out must be an f32 or bf16 tensor on ", u.device().str(), ", got ",
              out.defined() ? out.describe() : std::string("an undefined tensor"));
  ANVIL_CHECK(out.shape() == u.shape(), kOp, ": out ", out.describe(), " must have u's shape ", shape_str(u.shape()));
  ANVIL_CHECK(cfg.steps >= 0, kOp, ": steps = ", cfg.steps, " must be >= 0");
  if (u.numel() == 0) return;
  anvil::cuda::DeviceGuard guard(device);
  cudaStream_t stream = anvil::cuda::current_stream(device);
  const Device dev = Device::cuda(device);
  const int64_t rows = u.size(0), cols = u.size(1), n = rows * cols;
  const bool tall = rows > cols;
  const int64_t k = tall ? cols : rows;
  const DType work = cfg.bf16 ? DType::BF16 : DType::F32;

  Tensor src = u.contiguous();
  // The iterate X: out itself when it is contiguous and of the working dtype, else a buffer.
  Tensor x = out.is_contiguous() && out.dtype() == work ? out : Tensor::empty(u.shape(), work, dev);
  // Per-block partial sums of squares (doubles; there is no f64 dtype, so raw bytes) and the
  // norm factor, both on the device.
  Tensor partial = Tensor::empty({static_cast<int64_t>(kPartials * sizeof(double))}, DType::U8, dev);
  double* partial_ptr = static_cast<double*>(partial.raw_data());
  Tensor factor = Tensor::empty({1}, DType::F32, dev);

  auto sum_to_factor = [&](auto* data) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(data)>>;
    sum_squares_kernel<T><<<kPartials, kThreads, 0, stream>>>(data, n, partial_ptr);
    ANVIL_CUDA_CHECK_LAUNCH();
    norm_factor_kernel<<<1, kThreads, 0, stream>>>(partial_ptr, kPartials, cfg.eps, cfg.bf16,
                                                   factor.data<float>());
    ANVIL_CUDA_CHECK_LAUNCH();
  };

  if (!cfg.bf16) {
    // X = G / (||G||_F + eps); src is f32 here (a bf16 u is widened first).
    if (src.dtype() != DType::F32) src = src.to(DType::F32);
    sum_to_factor(src.data<float>());
    scale_kernel<<<blocks(n), kThreads, 0, stream>>>(src.data<float>(), x.data<float>(), n, factor.data<float>());
    ANVIL_CUDA_CHECK_LAUNCH();
  } else {
    auto* xb = reinterpret_cast<__nv_bfloat16*>(x.data<bf16_t>());
    if (src.dtype() == DType::F32)
      to_bf16_kernel<float><<<blocks(n), kThreads, 0, stream>>>(src.data<float>(), xb, n);
    else
      to_bf16_kernel<__nv_bfloat16>
          <<<blocks(n), kThreads, 0, stream>>>(reinterpret_cast<const __nv_bfloat16*>(src.data<bf16_t>()), xb, n);
    ANVIL_CUDA_CHECK_LAUNCH();
    sum_to_factor(static_cast<const __nv_bfloat16*>(xb));
    divide_bf16_kernel<<<blocks(n), kThreads, 0, stream>>>(xb, n, factor.data<float>());
    ANVIL_CUDA_CHECK_LAUNCH();
  }

  float a = static_cast<float>(cfg.a), b = static_cast<float>(cfg.b), c = static_cast<float>(cfg.c);
  if (cfg.bf16 && cfg.bf16_coefficients) {
    a = round_bf16_host(a);
    b = round_bf16_host(b);
    c = round_bf16_host(c);
  }
  Tensor y = Tensor::empty(u.shape(), work, dev);
  Tensor A = Tensor::empty({k, k}, work, dev);
  Tensor B = Tensor::empty({k, k}, work, dev);
  for (int step = 0; step < cfg.steps; ++step) {
    matmul(x, tall, x, !tall, A, 1.0f, 0.0f);  // A = X X^T (wide) or X^T X (tall)
    if (cfg.bf16) {
      matmul(A, false, A, false, B, 1.0f, 0.0f);  // B = round(A A)
      // A := round(round(b A) + round(c B)), the polynomial the CPU calls B.
      combine_bf16_kernel<<<blocks(k * k), kThreads, 0, stream>>>(
          reinterpret_cast<__nv_bfloat16*>(A.data<bf16_t>()), reinterpret_cast<const __nv_bfloat16*>(B.data<bf16_t>()),
          b, c, k * k);
      ANVIL_CUDA_CHECK_LAUNCH();
      // Y = round(A X) or round(X A); X = round(round(a X) + Y).
      if (tall) matmul(x, false, A, false, y, 1.0f, 0.0f);
      else matmul(A, false, x, false, y, 1.0f, 0.0f);
      combine_bf16_kernel<<<blocks(n), kThreads, 0, stream>>>(
          reinterpret_cast<__nv_bfloat16*>(x.data<bf16_t>()), reinterpret_cast<const __nv_bfloat16*>(y.data<bf16_t>()),
          a, 1.0f, n);
      ANVIL_CUDA_CHECK_LAUNCH();
    } else {
      // B = b A + c A A; Y = a X + B X (or X B); then X and Y trade places.
      B.copy_(A);
      matmul(A, false, A, false, B, c, b);
      y.copy_(x);
      if (tall) matmul(x, false, B, false, y, 1.0f, a);
      else matmul(B, false, x, false, y, 1.0f, a);
      std::swap(x, y);
    }
  }
  if (!x.same_storage(out)) out.copy_(x);
}

}  // namespace anvil::kernels::cuda
