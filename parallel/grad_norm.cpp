#include "parallel/grad_norm.h"

#include <algorithm>
#include <cmath>

#include "kernels/elementwise.h"

namespace anvil {

double grid_grad_norm(const std::vector<GradNormGroup>& groups, const GradNormAxes& axes,
                      const std::vector<const Param*>& excluded) {
  const bool tp_rank0 = !axes.tp || axes.tp->rank() == 0;
  auto counted = [&](const Param& p) {
    return (p.shard.over(Axis::TP) || tp_rank0) && std::find(excluded.begin(), excluded.end(), &p) == excluded.end();
  };
  double sum = 0;
  for (const GradNormGroup& g : groups) {
    double group_sum = 0;
    if (g.reducer) {
      group_sum = g.reducer->grad_sum_squares(counted);
    } else {
      std::vector<Tensor> grads;
      for (const Param* p : *g.params)
        if (p->grad.defined() && counted(*p)) grads.push_back(p->grad);
      group_sum = kernels::sum_squares(grads);
    }
    if (g.across && g.across->size() > 1) group_sum = all_reduce_sum(*g.across, group_sum);
    sum += group_sum;
  }
  if (axes.tp && axes.tp->size() > 1) sum = all_reduce_sum(*axes.tp, sum);
  if (axes.pp && axes.pp->size() > 1) sum = all_reduce_sum(*axes.pp, sum);
  return std::sqrt(sum);
}

double clip_grid_grad_norm(const std::vector<GradNormGroup>& groups, const GradNormAxes& axes,
                           const std::vector<const Param*>& excluded, double max_norm) {
  const double norm = grid_grad_norm(groups, axes, excluded);
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));  // as optim/clip_grad_norm
    for (const GradNormGroup& g : groups) {
      if (g.reducer) {
        g.reducer->scale_grads(scale);
        continue;
      }
      for (Param* p : *g.params)
        if (p->grad.defined()) kernels::scale_inplace(p->grad, scale);
    }
  }
  return norm;
}

}  // namespace anvil
