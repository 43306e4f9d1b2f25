#include "optim/adamw.h"

#include "kernels/optim_kernels.h"

namespace anvil {

AdamW::AdamW(std::vector<Param*> params, const AdamWConfig& config) : config_(config) {
  for (Param* p : params) {
    if (!p->trainable) continue;  // frozen params carry no optimizer state
    slots_.push_back({p, Tensor::zeros(p->value.shape()), Tensor::zeros(p->value.shape())});
  }
}

double AdamW::decay_for(const Param& p) const {
  switch (p.role) {
    case ParamRole::Matrix: return config_.weight_decay;
    case ParamRole::Embedding: return config_.decay_embeddings ? config_.weight_decay : 0.0;
    case ParamRole::Vector: return config_.decay_vectors ? config_.weight_decay : 0.0;
  }
  return 0.0;
}

kernels::AdamWStep adamw_step_constants(const AdamWConfig& config, double lr, int64_t step) {
  kernels::AdamWStep s;
  s.lr = static_cast<float>(lr);
  s.beta1 = static_cast<float>(config.beta1);
  s.beta2 = static_cast<float>(config.beta2);
  s.eps = static_cast<float>(config.eps);
  s.step = step;
  return s;
}

void AdamW::step(double lr) {
  ++steps_;
  kernels::AdamWStep s = adamw_step_constants(config_, lr, steps_);
  for (Slot& slot : slots_) {
    s.weight_decay = static_cast<float>(decay_for(*slot.param));
    kernels::adamw_update(slot.param->value, slot.param->grad, slot.exp_avg, slot.exp_avg_sq, s);
  }
}

std::vector<NamedTensor> AdamW::state() {
  std::vector<NamedTensor> out;
  for (Slot& slot : slots_) {
    out.push_back({slot.param->name + ".exp_avg", slot.exp_avg});
    out.push_back({slot.param->name + ".exp_avg_sq", slot.exp_avg_sq});
  }
  return out;
}

}  // namespace anvil
