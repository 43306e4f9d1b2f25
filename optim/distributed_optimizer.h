// DistributedOptimizer: AdamW alone, or a matrix optimizer (Muon, SOAP, COSMOS) for the
// hidden matrices with AdamW for the rest (HybridOptimizer's routing), under any
// data/tensor-parallel layout, taking exactly the step one process takes on the same
// global batch (DESIGN.md's layout invariant; the only differences are the gradients'
// own fp32 reduction order).
//
// AdamW is elementwise, so it runs where the elements live: on local tp shards, and under
// ZeRO on each dp rank's shard of the flat space (ShardedAdamW over the AdamW params only).
//
// Matrices are owned whole. Every matrix gets one owner slot (dp rank, tp rank), chosen on
// every rank alike: largest logical size first, each onto the least-loaded slot (ties: the
// lowest slot). Under ZeRO-1/2 the dp coordinate spreads the work over dp; without ZeRO every
// dp rank is an owner (the matrix work is replicated over dp, as plain data parallelism
// replicates everything). The owner updates the matrix at its full logical shape with the
// single-process code and holds its state; nobody else holds any of it. Per step, after
// DataParallel reduced (and the caller clipped) the gradients:
//  1. ZeRO only, over dp: each rank sends the piece of every matrix's reduced gradient that its
//     ZeRO shard holds to the matrix's dp owner (one all_to_allv), which writes the pieces into
//     the param's gradient view. DataParallel's buckets keep their reduce-scatter (ZeRO-2)
//     overlapped with backward, and the owner gets the clipped gradient (clipping under ZeRO
//     scales the shards only). Cost per rank: about N/(dp*tp) elements each way, N being the
//     matrices' logical elements; reducing matrix buckets with all_reduce instead would add an
//     all-gather of N/tp * (dp-1)/dp elements per rank, dp times more.
//  2. tp > 1, in the owner's dp row: every tp rank sends its (value, gradient) shard of a
//     tp-sharded matrix to the tp owner (one all_to_allv), which places them by each rank's
//     ShardSpec into full logical tensors. A matrix that is not sharded is read in place.
//     Cost: 2*(N/slots_dp)*(tp-1)/tp^2 elements per rank, slots_dp = dp under ZeRO, else 1.
//  3. The owner steps its matrices with the matrix optimizer (the single-process code).
//  4. tp > 1: the owner sends every tp rank its new shard (take_shard by that rank's spec; the
//     whole matrix when it is not sharded). Half of 2's volume.
//  5. ZeRO only: the owner sends every dp rank the piece of the new value that rank's shard holds
//     (N/(dp*tp) per rank), then DataParallel::all_gather_params as for ZeRO AdamW.
// Memory: the matrix state lives on its owner only, at full logical shape, so per rank it is
// about total/(slots_dp*tp) (balanced by element count; SOAP's m^2 + n^2 factors are not).
// The owner of a tp-sharded matrix also holds its full value and gradient during step() only.
//
// Checkpoints: state() is a collective over dp and tp returning every state tensor at full
// logical shape under the single-process names (matrix state broadcast from its owner over tp,
// then dp; AdamW moments gathered over dp under ZeRO and over tp for sharded params), and
// load_state() keeps this rank's part, so any layout resumes any other's checkpoint.
#pragma once
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "optim/hybrid.h"
#include "optim/sharded_adamw.h"
#include "parallel/data_parallel.h"

namespace anvil {

// The parallel context an optimizer steps in. All null: one process.
struct OptimizerLayout {
  // Gradients are reduced over dp (finish_grad_sync) before step(); zero_stage 1/2 shards the
  // state. Must outlive the optimizer.
  DataParallel* dp = nullptr;
  // Tensor parallelism: params with ShardSpec{TP} hold this rank's shard. Null: none.
  Communicator* tp = nullptr;
  // Pipeline parallelism: the params are this stage's, so routing's force_* patterns are matched
  // over the pp group (route_params). Null: one stage. Nothing else of the optimizer crosses stages.
  Communicator* pp = nullptr;
};

class DistributedOptimizer : public Optimizer {
 public:
  // make_matrix null: AdamW over every param (config.adamw, lr as given, named "adamw", as AdamW's
  // checkpoints); else the matrix group goes to make_matrix, one instance per owned matrix, and
  // the rest to AdamW at lr * adamw_lr_ratio (named "<matrix>+adamw", as HybridOptimizer).
  // A collective over dp and tp (tp shard specs and per-rank state sizes are exchanged).
  DistributedOptimizer(const std::vector<Param*>& params, const MatrixOptimizerFactory& make_matrix,
                       const HybridConfig& config, const OptimizerLayout& layout);
  const char* name() const override { return name_.c_str(); }
  // A collective over dp and tp (see the header comment). Reads, under ZeRO, DataParallel's
  // reduced shard gradients; otherwise every param's gradient (reduced over dp when dp is set).
  void step(double lr) override;
  std::vector<NamedTensor> state() override;  // collective over dp and tp; new full-shape tensors
  void load_state(const std::vector<NamedTensor>& full) override;
  size_t state_bytes() override;  // this rank's
  int64_t step_count() const override { return steps_; }
  void set_step_count(int64_t steps) override;

  struct Owner {
    std::string name;
    int64_t numel;  // logical
    int dp_rank;    // -1: every dp rank (no ZeRO)
    int tp_rank;
  };
  // Every matrix's owner, in routing order.
  const std::vector<Owner>& owners() const { return owners_; }
  // Every rank's state bytes (state is allocated up front), at dp_rank * tp + tp_rank.
  const std::vector<int64_t>& state_bytes_per_rank() const { return bytes_per_rank_; }
  // Empty for AdamW alone.
  const std::vector<RouteEntry>& routing() const { return routes_; }
  // The layout, the owners and the per-rank state bytes, for the start-up log.
  std::string describe() const;

 private:
  struct Matrix {
    Param* param = nullptr;  // this rank's (a local shard under tp)
    Shape full_shape;
    int owner_dp = -1, owner_tp = 0;
    bool tp_sharded = false;
    std::unique_ptr<Param> proxy;          // owner of a tp-sharded matrix: full value and grad during step()
    std::unique_ptr<Optimizer> optimizer;  // owner only: the matrix optimizer over this matrix
    std::vector<std::pair<std::string, Shape>> state_layout;  // its state names and shapes, on every rank
  };
  bool in_owner_row(const Matrix& m) const { return m.owner_dp < 0 || m.owner_dp == dp_rank_; }
  bool owns(const Matrix& m) const { return in_owner_row(m) && m.owner_tp == tp_rank_; }
  bool tp_sharded(const Param* p) const;
  void exchange_tp_specs(const std::vector<Param*>& params);
  void assign_owners(const MatrixOptimizerFactory& make_matrix);
  void gather_grads_to_dp_owners();
  void gather_shards_to_tp_owners();
  void scatter_values_from_tp_owners();
  void scatter_values_from_dp_owners();
  // A tp-sharded param's full logical tensor from every tp rank's local one (collective over tp).
  Tensor gather_over_tp(const Param* p, const Tensor& local);

  OptimizerLayout layout_;
  Device device_;  // the params' (weights, grads and every state tensor live there)
  HybridConfig config_;
  std::string name_;
  int dp_size_ = 1, dp_rank_ = 0, tp_size_ = 1, tp_rank_ = 0;
  bool zero_ = false;  // ZeRO-1/2: matrices owned per dp rank, AdamW sharded
  std::vector<RouteEntry> routes_;
  std::vector<Matrix> matrices_;
  std::vector<Owner> owners_;
  std::vector<Param*> adamw_params_;
  std::unique_ptr<ShardedAdamW> sharded_adamw_;  // under ZeRO
  std::unique_ptr<AdamW> adamw_;                 // otherwise
  std::unordered_map<const Param*, std::vector<ShardSpec>> tp_specs_;  // every tp rank's spec, by tp rank
  std::vector<int64_t> bytes_per_rank_;
  int64_t steps_ = 0;
};

}  // namespace anvil
