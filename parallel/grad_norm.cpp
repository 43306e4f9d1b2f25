#include "parallel/grad_norm.h"

#include <cmath>

#include "kernels/elementwise.h"

namespace anvil {

double model_grad_norm(TransformerLM& model, DataParallel* dp, Communicator* pp) {
  Communicator* tp = model.tensor_parallel();
  const bool tp_rank0 = !tp || tp->rank() == 0;
  const Param* tied_copy = model.tied_embedding_copy();
  auto counted = [&](const Param& p) { return &p != tied_copy && (p.shard.axis == GridAxis::TP || tp_rank0); };
  double sum = 0;
  if (dp) {
    sum = dp->grad_sum_squares(counted);
  } else {
    std::vector<Tensor> grads;
    for (const Param* p : model.params())
      if (p->grad.defined() && counted(*p)) grads.push_back(p->grad);
    sum = kernels::sum_squares(grads);
  }
  if (tp && tp->size() > 1) sum = all_reduce_sum(*tp, sum);
  if (pp && pp->size() > 1) sum = all_reduce_sum(*pp, sum);
  return std::sqrt(sum);
}

double clip_model_grad_norm(TransformerLM& model, DataParallel* dp, Communicator* pp, double max_norm) {
  const double norm = model_grad_norm(model, dp, pp);
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));  // as optim/clip_grad_norm
    if (dp) {
      dp->scale_grads(scale);
    } else {
      for (Param* p : model.params())
        if (p->grad.defined()) kernels::scale_inplace(p->grad, scale);
    }
  }
  return norm;
}

}  // namespace anvil
