// The global gradient norm of params split over the process grid, and clipping by it. It knows
// params, their gradient groups and communicators, not the model.
#pragma once
#include <vector>

#include "core/param.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"

namespace anvil {

// One gradient group as the norm sees it (parallel/grad_groups.h).
struct GradNormGroup {
  const std::vector<Param*>* params = nullptr;  // the group's params (their own grads when there is no reducer)
  DataParallel* reducer = nullptr;              // the group's reducer: its reduced grads (ZeRO shards) instead
  Communicator* across = nullptr;               // ranks holding the group's other params (ep for experts), or null
};
// The model axes a gradient element can be spread over: params split over tp count on every tp
// rank, tp replicas (norms, row-parallel biases: equal on every tp rank) on tp rank 0; pipeline
// stages hold disjoint params and are summed over pp. Null: not there.
struct GradNormAxes {
  Communicator* tp = nullptr;
  Communicator* pp = nullptr;
};

// Every gradient element counts once: each group's sum of squares (with a reducer, over its
// reduced grads, identical on the group's ranks: DataParallel::grad_sum_squares) is summed over
// `across`, the groups are added, and the total is summed over tp and pp. `excluded` params count
// nowhere (the last stage's copy of a tied embedding, counted on the first stage). A collective
// over every communicator given.
double grid_grad_norm(const std::vector<GradNormGroup>& groups, const GradNormAxes& axes,
                      const std::vector<const Param*>& excluded = {});

// grid_grad_norm, then scales every group's gradients (a reducer's reduced ones) so the norm is
// at most max_norm, as optim/clip_grad_norm; returns the norm before clipping. max_norm <= 0
// only measures.
double clip_grid_grad_norm(const std::vector<GradNormGroup>& groups, const GradNormAxes& axes,
                           const std::vector<const Param*>& excluded, double max_norm);

}  // namespace anvil
