// AdamW with decoupled weight decay chosen per param role (PyTorch semantics).
#pragma once
#include "kernels/optim_kernels.h"
#include "optim/optimizer.h"

namespace anvil {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  // Decay applies to `matrix` and `output` params; these opt the other roles in.
  bool decay_embeddings = false;
  bool decay_vectors = false;  // norms and biases
};

// The fused kernel's per-step constants for this config (weight decay set per param).
kernels::AdamWStep adamw_step_constants(const AdamWConfig& config, double lr, int64_t step);

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<Param*> params, const AdamWConfig& config);
  const char* name() const override { return "adamw"; }
  void step(double lr) override;
  std::vector<NamedTensor> state() override;
  int64_t step_count() const override { return steps_; }
  void set_step_count(int64_t steps) override { steps_ = steps; }
  // The weight decay a param gets under this config.
  double decay_for(const Param& p) const;

 private:
  struct Slot {
    Param* param;
    Tensor exp_avg;
    Tensor exp_avg_sq;
  };
  AdamWConfig config_;
  std::vector<Slot> slots_;
  int64_t steps_ = 0;
};

}  // namespace anvil
