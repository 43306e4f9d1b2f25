#include "optim/adamw.h"

#include "kernels/optim_kernels.h"

namespace anvil {

AdamW::AdamW(std::vector<Param*> params, const AdamWConfig& config) : config_(config) {
  for (Param* p : params) {
    if (!p->trainable) continue;  // frozen params carry no optimizer state
    const Tensor& w = master_weight(*p);  // moments are f32 where the weights live
    slots_.push_back({p, zeros_like(w, w.shape(), DType::F32), zeros_like(w, w.shape(), DType::F32)});
  }
}

double AdamW::decay_for(const Param& p) const {
  switch (p.role) {
    case ParamRole::Matrix:
    case ParamRole::Output: return config_.weight_decay;  // a weight matrix, decayed as one
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
    Param& p = *slot.param;
    s.lr = static_cast<float>(lr * p.lr_scale);
    // Mixed precision: the master is updated and the rounded value written in the same pass.
    Tensor low_precision = p.master.defined() ? p.value : Tensor();
    kernels::adamw_update(master_weight(p), p.grad, slot.exp_avg, slot.exp_avg_sq, s, low_precision);
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
