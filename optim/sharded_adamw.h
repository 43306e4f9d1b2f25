// ZeRO-1/2 AdamW: each data-parallel rank keeps the moments of its shard of the flat
// parameter space only (DataParallel's layout), updates that shard with exactly the
// per-element math of AdamW (the same fused kernel, the same per-param weight decay),
// then all_gathers the updated params. Checkpoint state is gathered back to every
// param's full shape under AdamW's names, so sharded and unsharded runs read and
// write the same files.
#pragma once
#include "optim/adamw.h"
#include "parallel/data_parallel.h"

namespace anvil {

class ShardedAdamW : public Optimizer {
 public:
  // `dp` (zero_stage 1 or 2) must outlive this optimizer; its grads must be reduced
  // (finish_grad_sync) and clipped before step().
  ShardedAdamW(DataParallel& dp, const AdamWConfig& config);
  const char* name() const override { return "adamw"; }  // the same state, so the same checkpoints
  void step(double lr) override;
  std::vector<NamedTensor> state() override;  // collective: gathers full-shape moments
  void load_state(const std::vector<NamedTensor>& full) override;
  size_t state_bytes() override { return exp_avg_.nbytes() + exp_avg_sq_.nbytes(); }
  int64_t step_count() const override { return steps_; }
  void set_step_count(int64_t steps) override { steps_ = steps; }

 private:
  DataParallel& dp_;
  AdamW decay_rule_;  // holds no state: only answers decay_for(param)
  AdamWConfig config_;
  Tensor exp_avg_, exp_avg_sq_;  // this rank's shard space (DataParallel::shard_numel)
  int64_t steps_ = 0;
};

}  // namespace anvil
