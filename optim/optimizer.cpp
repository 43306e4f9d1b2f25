#include "optim/optimizer.h"

#include <cmath>

#include "kernels/elementwise.h"

namespace anvil {

size_t Optimizer::state_bytes() {
  size_t total = 0;
  for (const NamedTensor& t : state()) total += t.tensor.nbytes();
  return total;
}

double global_grad_norm(const std::vector<Param*>& params) {
  std::vector<Tensor> grads;  // one list: on CUDA one host round trip, not one per param
  for (const Param* p : params)
    if (p->grad.defined()) grads.push_back(p->grad);
  return std::sqrt(kernels::sum_squares(grads));
}

double clip_grad_norm(const std::vector<Param*>& params, double max_norm) {
  const double norm = global_grad_norm(params);
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));
    for (Param* p : params)
      if (p->grad.defined()) kernels::scale_inplace(p->grad, scale);
  }
  return norm;
}

}  // namespace anvil
