#include "parallel/grid.h"

#include "parallel/ulysses.h"

namespace anvil {

const char* axis_name(Axis axis) {
  switch (axis) {
    case Axis::DP: return "dp";
    case Axis::TP: return "tp";
    case Axis::PP: return "pp";
    case Axis::SP: return "sp";
  }
  return "?";
}

std::string GridDims::str() const {
  return "dp=" + std::to_string(dp) + " tp=" + std::to_string(tp) + " pp=" + std::to_string(pp) +
         " sp=" + std::to_string(sp);
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
  int r = world_->rank();
  coords_[static_cast<int>(Axis::TP)] = r % dims.tp;
  r /= dims.tp;
  coords_[static_cast<int>(Axis::SP)] = r % dims.sp;
  r /= dims.sp;
  coords_[static_cast<int>(Axis::DP)] = r % dims.dp;
  r /= dims.dp;
  coords_[static_cast<int>(Axis::PP)] = r;
  // A sub-communicator groups the ranks that agree on every other coordinate.
  for (Axis axis : {Axis::DP, Axis::TP, Axis::PP, Axis::SP}) {
    int color = 0;
    for (Axis other : {Axis::PP, Axis::DP, Axis::SP, Axis::TP}) {
      const int extent = size(other);
      color = color * extent + (other == axis ? 0 : coords_[static_cast<int>(other)]);
    }
    comms_[static_cast<int>(axis)] = base.split(color, coords_[static_cast<int>(axis)]);
  }
  const int dp_sp_color = rank(Axis::PP) * dims.tp + rank(Axis::TP);
  data_sequence_ = base.split(dp_sp_color, rank(Axis::DP) * dims.sp + rank(Axis::SP));
}

int ProcessGrid::size(Axis axis) const {
  switch (axis) {
    case Axis::DP: return dims_.dp;
    case Axis::TP: return dims_.tp;
    case Axis::PP: return dims_.pp;
    case Axis::SP: return dims_.sp;
  }
  return 1;
}

int ProcessGrid::rank(Axis axis) const { return coords_[static_cast<int>(axis)]; }

Communicator& ProcessGrid::comm(Axis axis) const { return *comms_[static_cast<int>(axis)]; }

int ProcessGrid::world_rank(int dp_i, int tp_i, int pp_i, int sp_i) const {
  return ((pp_i * dims_.dp + dp_i) * dims_.sp + sp_i) * dims_.tp + tp_i;
}

void validate_layout(const GridDims& dims, const ModelConfig& m) {
  auto divides = [](int degree, int64_t n, const char* axis, const char* field) {
    ANVIL_CHECK(n % degree == 0, "parallel.", axis, " = ", degree, " does not divide ", field, " = ", n,
                " — pick a degree that divides it");
  };
  divides(dims.tp, m.num_attention_heads, "tp", "num_attention_heads");
  divides(dims.tp, m.num_key_value_heads, "tp", "num_key_value_heads");
  divides(dims.tp, m.intermediate_size, "tp", "intermediate_size");
  divides(dims.tp, m.vocab_size, "tp", "vocab_size");
  // Ulysses hands each sp rank whole KV heads of its tp rank's shard (with their query heads).
  const int64_t kv_per_tp = m.num_key_value_heads / dims.tp;
  ANVIL_CHECK(kv_per_tp % dims.sp == 0, "parallel.sp = ", dims.sp, dims.sp > kv_per_tp ? " exceeds" : " does not divide",
              " the ", kv_per_tp, " KV heads of each tp rank (num_key_value_heads = ", m.num_key_value_heads,
              " over tp = ", dims.tp, ") — Ulysses sequence parallelism gives every sp rank whole KV heads for the "
              "full sequence, so sp must divide num_key_value_heads / tp = ", kv_per_tp, " (at most ", kv_per_tp,
              "). Use sp in {", ulysses_sp_degrees(kv_per_tp), "} and put the other ranks on dp",
              dims.tp > 1 ? ", or lower tp to leave more KV heads per tp rank" : "");
  // Stage s owns layers [s*L/pp, (s+1)*L/pp): equal contiguous ranges, each at least one layer.
  ANVIL_CHECK(m.num_hidden_layers % dims.pp == 0, "parallel.pp = ", dims.pp, " does not divide num_hidden_layers = ",
              m.num_hidden_layers, " — pipeline stages own equal ranges of layers, so pick a pp that divides ",
              m.num_hidden_layers);
}

}  // namespace anvil
