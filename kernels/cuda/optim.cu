// The fused optimizer passes on CUDA: AdamW (kernels/optim_kernels.h), with the bf16
// compute copy written in the same pass, and Muon's momentum (kernels/muon_kernels.h).
// One thread per element (grid-stride), the CPU backend's formulas term for term.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace anvil::kernels::cuda {
namespace {

struct AdamWScalars {
  float decay, step_size, sqrt_c2, b1, b2, eps;
};

// L: the low-precision copy's element type (unused when low is null).
template <class L>
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, L* low, int64_t n, AdamWScalars s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    const float mi = s.b1 * m[i] + (1.0f - s.b1) * gi;
    const float vi = s.b2 * v[i] + (1.0f - s.b2) * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    const float pi = p[i] * s.decay - s.step_size * mi / (sqrtf(vi) / s.sqrt_c2 + s.eps);
    p[i] = pi;
    if (low) low[i] = from_f32<L>(pi);
  }
}

__global__ void muon_momentum_kernel(const float* g, float* m, float* u, int64_t n, float beta, float gw,
                                     bool nesterov) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    const float mi = beta * m[i] + gw * gi;
    m[i] = mi;
    u[i] = nesterov ? gw * gi + beta * mi : mi;
  }
}

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWStep& s,
                  Tensor& low_precision) {
  OpContext ctx("adamw_update", "param", param);
  float* p = ctx.contiguous_f32("param", param);
  const float* g = ctx.contiguous_f32("grad", grad);
  float* m = ctx.contiguous_f32("exp_avg", exp_avg);
  float* v = ctx.contiguous_f32("exp_avg_sq", exp_avg_sq);
  require_same_shape(ctx.op(), "grad", grad, "param", param);
  require_same_shape(ctx.op(), "exp_avg", exp_avg, "param", param);
  require_same_shape(ctx.op(), "exp_avg_sq", exp_avg_sq, "param", param);
  void* low = nullptr;
  if (low_precision.defined()) {
    ctx.require_float("low_precision", low_precision);
    low = ctx.contiguous("low_precision", low_precision, low_precision.dtype());
    require_same_shape(ctx.op(), "low_precision", low_precision, "param", param);
  }
  const int64_t n = param.numel();
  if (n == 0) return;
  // The scalars exactly as the CPU backend forms them (bias corrections through double).
  AdamWScalars k;
  k.decay = 1.0f - s.lr * s.weight_decay;
  const float c1 = 1.0f - static_cast<float>(std::pow(static_cast<double>(s.beta1), static_cast<double>(s.step)));
  const double c2 = 1.0 - std::pow(static_cast<double>(s.beta2), static_cast<double>(s.step));
  k.step_size = s.lr / c1;
  k.sqrt_c2 = static_cast<float>(std::sqrt(c2));
  k.b1 = s.beta1;
  k.b2 = s.beta2;
  k.eps = s.eps;
  const unsigned grid = blocks_for(n, kThreads);
  if (low && low_precision.dtype() == DType::BF16)
    adamw_kernel<bf16><<<grid, kThreads, 0, ctx.stream()>>>(p, g, m, v, static_cast<bf16*>(low), n, k);
  else
    adamw_kernel<float><<<grid, kThreads, 0, ctx.stream()>>>(p, g, m, v, static_cast<float*>(low), n, k);
  ANVIL_CUDA_CHECK_LAUNCH();
}

void muon_momentum(const Tensor& grad, Tensor& buffer, Tensor& update, float beta, bool nesterov, bool ema) {
  OpContext ctx("muon_momentum", "grad", grad);
  const float* g = ctx.contiguous_f32("grad", grad);
  float* m = ctx.contiguous_f32("buffer", buffer);
  float* u = ctx.contiguous_f32("update", update);
  require_same_shape(ctx.op(), "grad", grad, "buffer", buffer);
  require_same_shape(ctx.op(), "grad", grad, "update", update);
  const int64_t n = grad.numel();
  if (n == 0) return;
  const float gw = ema ? 1.0f - beta : 1.0f;  // weight of the gradient in both B and U
  muon_momentum_kernel<<<blocks_for(n, kThreads), kThreads, 0, ctx.stream()>>>(g, m, u, n, beta, gw, nesterov);
  ANVIL_CUDA_CHECK_LAUNCH();
}

}  // namespace anvil::kernels::cuda
