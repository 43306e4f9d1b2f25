// ZeRO-1/2 AdamW: each data-parallel rank keeps the moments of its shard of the flat
// parameter space only (DataParallel's layout), updates that shard with exactly the
// per-element math of AdamW (the same fused kernel, the same per-param weight decay),
// then all_gathers the updated params. Checkpoint state is gathered back to every
// param's full shape under AdamW's names, so sharded and unsharded runs read and
// write the same files.
//
// It may own a subset of DataParallel's params (the rest belong to another optimizer,
// e.g. DistributedOptimizer's matrix owners): its moments then cover only the subset's
// segments of this rank's shard, packed without gaps or padding.
#pragma once
#include <unordered_set>

#include "optim/adamw.h"
#include "parallel/data_parallel.h"

namespace anvil {

class ShardedAdamW : public Optimizer {
 public:
  // `dp` (zero_stage 1 or 2) must outlive this optimizer; its grads must be reduced
  // (finish_grad_sync) and clipped before step(). Owns every param of `dp`.
  ShardedAdamW(DataParallel& dp, const AdamWConfig& config);
  // Owns only `params` (each must be one of dp's).
  ShardedAdamW(DataParallel& dp, const AdamWConfig& config, const std::vector<Param*>& params);
  const char* name() const override { return "adamw"; }  // the same state, so the same checkpoints
  // update_shard(lr), then dp.all_gather_params().
  void step(double lr) override;
  // One step on this rank's shard of the owned params only (no communication): for a caller
  // that changes other params' shards too and all_gathers once.
  void update_shard(double lr);
  std::vector<NamedTensor> state() override;  // collective over dp: gathers full-shape moments
  void load_state(const std::vector<NamedTensor>& full) override;
  size_t state_bytes() override { return exp_avg_.nbytes() + exp_avg_sq_.nbytes(); }
  int64_t step_count() const override { return steps_; }
  void set_step_count(int64_t steps) override { steps_ = steps; }

 private:
  // An owned param's piece of this rank's shard and where its moments live in exp_avg_.
  struct Piece {
    DataParallel::Segment segment;
    int64_t moment_offset;
  };
  DataParallel& dp_;
  AdamW decay_rule_;  // holds no state: only answers decay_for(param)
  AdamWConfig config_;
  std::vector<Param*> params_;  // owned, in dp's registration order
  std::vector<Piece> pieces_;
  Tensor exp_avg_, exp_avg_sq_;  // the pieces' moments, packed
  int64_t steps_ = 0;
};

}  // namespace anvil
