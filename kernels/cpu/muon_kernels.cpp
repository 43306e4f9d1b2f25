// Muon on the CPU: the momentum pass is one fused OpenMP loop; Newton–Schulz is
// three OpenBLAS sgemm calls per iteration on fp32 buffers.
#include "kernels/muon_kernels.h"

#include <cmath>
#include <utility>

#include "kernels/cpu/common.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"

namespace anvil::kernels {

void newton_schulz(const Tensor& u, Tensor& out, const NewtonSchulzConfig& cfg) {
  constexpr const char* kOp = "newton_schulz";
  cpu::require_cpu_dtype(kOp, "u", u, DType::F32);
  cpu::require_cpu_dtype(kOp, "out", out, DType::F32);
  ANVIL_CHECK(u.dim() == 2, kOp, ": u is ", u.describe(),
              " but must be 2-D — view conv or stacked weights as [out, rest] first");
  cpu::require_same_shape(kOp, "u", u, "out", out);
  ANVIL_CHECK(cfg.steps >= 0, kOp, ": steps = ", cfg.steps, " must be >= 0");
  const int64_t rows = u.size(0), cols = u.size(1);
  if (u.numel() == 0) return;
  const bool tall = rows > cols;
  const int64_t gram = tall ? cols : rows;  // the smaller side

  Tensor x = u.contiguous().clone();
  const double norm = std::sqrt(sum_squares(x));
  scale_inplace(x, static_cast<float>(1.0 / (norm + static_cast<double>(cfg.eps))));
  Tensor next = Tensor::empty(x.shape());
  Tensor a = Tensor::empty({gram, gram}), b = Tensor::empty({gram, gram});
  for (int it = 0; it < cfg.steps; ++it) {
    // A = X X^T (wide) or X^T X (tall); B = b A + c A A; X = a X + B X (or X B).
    matmul(x, tall, x, !tall, a);
    b.copy_(a);
    matmul(a, false, a, false, b, cfg.c, cfg.b);
    next.copy_(x);
    if (tall) matmul(x, false, b, false, next, 1.0f, cfg.a);
    else matmul(b, false, x, false, next, 1.0f, cfg.a);
    std::swap(x, next);
  }
  out.copy_(x);
}

void muon_momentum(const Tensor& grad, Tensor& buffer, Tensor& update, float beta, bool nesterov, bool ema) {
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
