// ProcessGrid: the rank layout over {dp, tp, pp, sp, ep} with tp fastest-varying,
// then sp, dp, pp (Megatron's order; ep is reserved for MoE and folds into dp):
//   world rank = ((pp_i * dp + dp_i) * sp + sp_i) * tp + tp_i
// Every sub-communicator is built once, here, and passed explicitly; there are no
// global accessors.
#pragma once
#include <memory>
#include <string>

#include "models/config.h"
#include "parallel/communicator.h"

namespace anvil {

enum class Axis { DP, TP, PP, SP };
const char* axis_name(Axis axis);

struct GridDims {
  int dp = 1, tp = 1, pp = 1, sp = 1;
  int product() const { return dp * tp * pp * sp; }
  std::string str() const;  // "dp=2 tp=2 pp=1 sp=1"
};

class ProcessGrid {
 public:
  // Collective over `world`. Throws (on every rank alike) when the degrees do not
  // multiply to the world size, naming both numbers and the launch fix.
  //
  // collectives: what the per-axis communicators (and data_sequence_comm) are split from.
  // Null: `world` itself (MPI, host tensors; the CPU path). For CUDA runs, a NCCL
  // communicator over the same ranks, grid_collective_world(world, "cuda") of
  // parallel/nccl_communicator.h: the axes then move device tensors with NCCL (CPU tensors
  // still go over MPI), while world() stays the host communicator for metadata,
  // checkpoints and the peer watchdog.
  ProcessGrid(std::shared_ptr<Communicator> world, const GridDims& dims,
              std::shared_ptr<Communicator> collectives = nullptr);

  const GridDims& dims() const { return dims_; }
  int size(Axis axis) const;
  int rank(Axis axis) const;  // this process's coordinate on `axis`
  Communicator& comm(Axis axis) const;
  Communicator& world() const { return *world_; }
  // What the axes were split from: `collectives` when given, else world().
  Communicator& collectives() const { return collectives_ ? *collectives_ : *world_; }
  // The dp x sp communicator: the ranks sharing this rank's tp and pp coordinates, ordered
  // dp_i * sp + sp_i. Under Ulysses sequence parallelism every gradient is a partial sum
  // over the sp ranks as well as the dp ranks (each saw a slice of the tokens), so the
  // trainer sums gradients and loss-token counts over this group and shards ZeRO state
  // over it, as DeepSpeed-Ulysses does. With sp = 1 it has the dp communicator's members.
  Communicator& data_sequence_comm() const { return *data_sequence_; }
  // The world rank at the given coordinates (for pipeline neighbours and tests).
  int world_rank(int dp_i, int tp_i, int pp_i, int sp_i) const;

 private:
  std::shared_ptr<Communicator> world_;
  std::shared_ptr<Communicator> collectives_;
  GridDims dims_;
  int coords_[4] = {0, 0, 0, 0};  // indexed by Axis
  std::unique_ptr<Communicator> comms_[4];
  std::unique_ptr<Communicator> data_sequence_;
};

// The layout checks that need the model: tp must divide the heads, KV heads, vocabulary
// and intermediate size; sp the KV heads of each tp rank (Ulysses splits whole heads, so
// sp <= num_key_value_heads / tp; the error lists the degrees that work); pp the layer
// count. Each failure names the degree, the model field and both numbers.
void validate_layout(const GridDims& dims, const ModelConfig& model);

}  // namespace anvil
