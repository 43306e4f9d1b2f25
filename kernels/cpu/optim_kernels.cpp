#include "kernels/optim_kernels.h"

#include <cmath>

#include "kernels/backend.h"

namespace anvil::kernels {

void adamw_update(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWStep& s) {
  Tensor none;
  adamw_update(param, grad, exp_avg, exp_avg_sq, s, none);
}

void adamw_update(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWStep& s,
                  Tensor& low_precision) {
  ANVIL_DISPATCH_CUDA(param, adamw_update, param, grad, exp_avg, exp_avg_sq, s, low_precision);
  for (const Tensor* t : {&grad, static_cast<const Tensor*>(&exp_avg), static_cast<const Tensor*>(&exp_avg_sq)})
    ANVIL_CHECK(t->shape() == param.shape() && t->is_contiguous() && t->dtype() == DType::F32,
                "adamw_update: ", t->describe(), " does not match param ", param.describe());
  ANVIL_CHECK(param.is_contiguous() && param.device().is_cpu(), "adamw_update needs contiguous CPU f32 tensors, got ",
              param.describe());
  float* p = param.data<float>();
  const float* g = grad.data<float>();
  float* m = exp_avg.data<float>();
  float* v = exp_avg_sq.data<float>();
  const int64_t n = param.numel();
  const float decay = 1.0f - s.lr * s.weight_decay;
  const float c1 = 1.0f - static_cast<float>(std::pow(static_cast<double>(s.beta1), static_cast<double>(s.step)));
  const double c2 = 1.0 - std::pow(static_cast<double>(s.beta2), static_cast<double>(s.step));
  const float step_size = s.lr / c1;
  const float sqrt_c2 = static_cast<float>(std::sqrt(c2));
  const float b1 = s.beta1, b2 = s.beta2, eps = s.eps;
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * mi / ((std::sqrt(vi) / sqrt_c2 + eps));
  }
  if (low_precision.defined()) low_precision.copy_(param);
}

}  // namespace anvil::kernels
