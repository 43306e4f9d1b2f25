// Muon's momentum pass on the CPU: one fused OpenMP loop.
#include "kernels/muon_kernels.h"

#include "kernels/backend.h"
#include "kernels/cpu/common.h"

namespace anvil::kernels {

void muon_momentum(const Tensor& grad, Tensor& buffer, Tensor& update, float beta, bool nesterov, bool ema) {
  ANVIL_DISPATCH_CUDA(grad, muon_momentum, grad, buffer, update, beta, nesterov, ema);
  constexpr const char* kOp = "muon_momentum";
  const float* g = cpu::contiguous_f32(kOp, "grad", grad);
  float* m = cpu::contiguous_f32(kOp, "buffer", buffer);
  float* u = cpu::contiguous_f32(kOp, "update", update);
  cpu::require_same_shape(kOp, "grad", grad, "buffer", buffer);
  cpu::require_same_shape(kOp, "grad", grad, "update", update);
  const int64_t n = grad.numel();
  const float gw = ema ? 1.0f - beta : 1.0f;  // weight of the gradient in both B and U
#pragma omp parallel for simd schedule(static) if (n >= cpu::kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const float mi = beta * m[i] + gw * g[i];
    m[i] = mi;
    u[i] = nesterov ? gw * g[i] + beta * mi : mi;
  }
}

}  // namespace anvil::kernels
