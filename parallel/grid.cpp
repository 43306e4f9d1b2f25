#include "parallel/grid.h"

#include "core/error.h"

namespace anvil {

int GridDims::size(Axis axis) const {
  switch (axis) {
    case Axis::DP: return dp;
    case Axis::TP: return tp;
    case Axis::PP: return pp;
    case Axis::SP: return sp;
    case Axis::EP: return ep;
  }
  return 1;
}

std::string GridDims::str() const {
  return "dp=" + std::to_string(dp) + " tp=" + std::to_string(tp) + " pp=" + std::to_string(pp) +
         " sp=" + std::to_string(sp) + (ep > 1 ? " ep=" + std::to_string(ep) : "");
}

void check_expert_degree(const GridDims& dims) {
  ANVIL_CHECK(dims.ep >= 1, "parallel.ep = ", dims.ep, " must be >= 1 — use 1 for a model without experts");
  ANVIL_CHECK(dims.dp % dims.ep == 0, "parallel.ep = ", dims.ep, " does not divide parallel.dp = ", dims.dp,
              " — expert parallelism is carved out of the data-parallel ranks, so pick an ep that divides dp (or "
              "raise dp to a multiple of ep)");
}

ProcessGrid::ProcessGrid(std::shared_ptr<Communicator> world, const GridDims& dims,
                         std::shared_ptr<Communicator> collective_world)
    : world_(std::move(world)), collectives_(std::move(collective_world)), dims_(dims) {
  for (int d : {dims.dp, dims.tp, dims.pp, dims.sp})
    ANVIL_CHECK(d >= 1, "parallel: every degree must be >= 1, got ", dims.str());
  ANVIL_CHECK(dims.product() == world_->size(), "parallel: dp*tp*pp*sp = ", dims.dp, "*", dims.tp, "*", dims.pp, "*",
              dims.sp, " = ", dims.product(), " but the job has ", world_->size(),
              " processes — launch with mpirun -np ", dims.product(), " (or srun -n ", dims.product(),
              "), or change the parallel section to multiply to ", world_->size());
  check_expert_degree(dims);
  if (collectives_) {
    // Agreed over the world, so a rank placed differently fails everywhere instead of hanging the splits.
    const bool mismatch = collectives_->size() != world_->size() || collectives_->rank() != world_->rank();
    Tensor any = Tensor::full({1}, mismatch ? 1 : 0, DType::I32);
    world_->all_reduce(any, ReduceOp::Max);
    ANVIL_CHECK(any.item() == 0, "ProcessGrid: the collectives communicator places ",
                mismatch ? "this rank" : "some rank", " differently from the world (here: rank ",
                collectives_->rank(), " of ", collectives_->size(), " vs world rank ", world_->rank(), " of ",
                world_->size(), ") — build it over the world's ranks in the world's order (grid_collective_world)");
  }
  Communicator& base = collectives();
  auto coord = [&](Axis a) -> int& { return coords_[static_cast<int>(a)]; };
  int r = world_->rank();
  coord(Axis::TP) = r % dims.tp;
  r /= dims.tp;
  coord(Axis::SP) = r % dims.sp;
  r /= dims.sp;
  coord(Axis::DP) = r % dims.dp;
  r /= dims.dp;
  coord(Axis::PP) = r;
  coord(Axis::EP) = coord(Axis::DP) % dims.ep;
  const int edp = coord(Axis::DP) / dims.ep;  // which expert-data replica
  // A sub-communicator groups the ranks that agree on every other coordinate.
  for (Axis axis : {Axis::DP, Axis::TP, Axis::PP, Axis::SP}) {
    int color = 0;
    for (Axis other : {Axis::PP, Axis::DP, Axis::SP, Axis::TP}) {
      const int extent = size(other);
      color = color * extent + (other == axis ? 0 : coord(other));
    }
    comms_[static_cast<int>(axis)] = base.split(color, coord(axis));
  }
  // ep: the ranks of one expert-data replica (dp_i / ep) that agree on pp, sp and tp.
  const int ep_color = ((rank(Axis::PP) * (dims.dp / dims.ep) + edp) * dims.sp + rank(Axis::SP)) * dims.tp +
                       rank(Axis::TP);
  comms_[static_cast<int>(Axis::EP)] = base.split(ep_color, rank(Axis::EP));
  const int dp_sp_color = rank(Axis::PP) * dims.tp + rank(Axis::TP);
  data_sequence_ = base.split(dp_sp_color, rank(Axis::DP) * dims.sp + rank(Axis::SP));
  if (dims.ep > 1) {
    const int color = (rank(Axis::PP) * dims.ep + rank(Axis::EP)) * dims.tp + rank(Axis::TP);
    expert_data_sequence_ = base.split(color, edp * dims.sp + rank(Axis::SP));
  }
}

int ProcessGrid::rank(Axis axis) const { return coords_[static_cast<int>(axis)]; }

Communicator& ProcessGrid::comm(Axis axis) const { return *comms_[static_cast<int>(axis)]; }

Communicator& ProcessGrid::expert_data_sequence_comm() const {
  return expert_data_sequence_ ? *expert_data_sequence_ : *data_sequence_;
}

bool writes_first_copy(const ProcessGrid& grid, const ShardSpec& spec) {
  const int replica = spec.over(Axis::EP) ? grid.rank(Axis::DP) / grid.size(Axis::EP) : grid.rank(Axis::DP);
  bool first = replica == 0 || spec.over(Axis::DP);
  for (Axis axis : {Axis::SP, Axis::TP}) first = first && (grid.rank(axis) == 0 || spec.over(axis));
  return first;
}

int ProcessGrid::world_rank(int dp_i, int tp_i, int pp_i, int sp_i) const {
  return ((pp_i * dims_.dp + dp_i) * dims_.sp + sp_i) * dims_.tp + tp_i;
}

}  // namespace anvil
