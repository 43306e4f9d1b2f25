// ProcessGrid: the rank layout over the named axes {dp, tp, pp, sp, ep}, in Megatron's
// order tp-cp-ep-dp-pp (our sp is Megatron's cp): tp varies fastest, then sp, then dp, then pp:
//   world rank = ((pp_i * dp + dp_i) * sp + sp_i) * tp + tp_i
// Expert parallelism is carved out of the data-parallel ranks, as in Megatron-Core and
// DeepSpeed-MoE: ep divides dp, and a dp coordinate splits as dp_i = edp_i * ep + ep_i (ep
// fastest, hence "ep-dp" in the order). The ep ranks of one expert-data replica hold
// different experts; dense params are still replicated over all dp ranks. ep adds no
// ranks, so the world is dp*tp*pp*sp and with ep = 1 every rank keeps its coordinates.
// Every sub-communicator is built once, here, and passed explicitly; there are no
// global accessors. The checks that need a model live in models/layout_checks.h.
#pragma once
#include <memory>
#include <string>

#include "core/axis.h"
#include "core/param.h"
#include "parallel/communicator.h"

namespace anvil {

struct GridDims {
  int dp = 1, tp = 1, pp = 1, sp = 1;
  int ep = 1;  // divides dp: not a factor of the world size
  int product() const { return dp * tp * pp * sp; }
  int size(Axis axis) const;
  std::string str() const;  // "dp=2 tp=2 pp=1 sp=1" (and " ep=2" when ep > 1)
};

class ProcessGrid {
 public:
  // Collective over `world`. Throws (on every rank alike) when the degrees do not
  // multiply to the world size, naming both numbers and the launch fix, or when ep does
  // not divide dp.
  //
  // collectives: what the per-axis communicators (and the data groups) are split from.
  // Null: `world` itself (MPI, host tensors; the CPU path). For CUDA runs, a NCCL
  // communicator over the same ranks, grid_collective_world(world, "cuda") of
  // parallel/nccl_communicator.h: the axes then move device tensors with NCCL (CPU tensors
  // still go over MPI), while world() stays the host communicator for metadata,
  // checkpoints and the peer watchdog.
  ProcessGrid(std::shared_ptr<Communicator> world, const GridDims& dims,
              std::shared_ptr<Communicator> collectives = nullptr);

  const GridDims& dims() const { return dims_; }
  int size(Axis axis) const { return dims_.size(axis); }
  // This process's coordinate on `axis`; for ep, rank(DP) % ep.
  int rank(Axis axis) const;
  // The ranks that agree with this one on every other coordinate. comm(EP): the ep ranks of
  // this rank's expert-data replica (same pp, sp, tp and dp_i / ep).
  Communicator& comm(Axis axis) const;
  Communicator& world() const { return *world_; }
  // What the axes were split from: `collectives` when given, else world().
  Communicator& collectives() const { return collectives_ ? *collectives_ : *world_; }
  // The dp x sp communicator: the ranks sharing this rank's tp and pp coordinates, ordered
  // dp_i * sp + sp_i. Under Ulysses sequence parallelism every gradient is a partial sum
  // over the sp ranks as well as the dp ranks (each saw a slice of the tokens), so the
  // trainer sums dense gradients and loss-token counts over this group and shards ZeRO
  // state over it, as DeepSpeed-Ulysses does. With sp = 1 it has the dp communicator's members.
  Communicator& data_sequence_comm() const { return *data_sequence_; }
  // The dp x sp ranks that hold the same experts: data_sequence_comm() less the ep axis
  // (same tp, pp and ep coordinates), ordered edp_i * sp + sp_i. An expert's gradients are
  // summed over it. With ep = 1 it is data_sequence_comm() itself.
  Communicator& expert_data_sequence_comm() const;
  // The world rank at the given coordinates (for pipeline neighbours and tests).
  int world_rank(int dp_i, int tp_i, int pp_i, int sp_i) const;

 private:
  std::shared_ptr<Communicator> world_;
  std::shared_ptr<Communicator> collectives_;
  GridDims dims_;
  int coords_[kAxisCount] = {};  // indexed by Axis
  std::unique_ptr<Communicator> comms_[kAxisCount];
  std::unique_ptr<Communicator> data_sequence_;
  std::unique_ptr<Communicator> expert_data_sequence_;  // null when ep = 1
};

// Whether this rank writes its copy of a tensor laid out by `spec`, so that one copy of each
// element reaches a file: ranks that hold the same elements leave it to the first of them. That
// is rank 0 on dp (for a tensor split over ep: the first expert-data replica), on sp, and on tp
// unless split over it; pipeline stages hold disjoint tensors.
bool writes_first_copy(const ProcessGrid& grid, const ShardSpec& spec);

// Throws unless `ep` divides `dp`, naming both fields and the fix (for config checks too).
void check_expert_degree(const GridDims& dims);

}  // namespace anvil
