// Gradient groups: the trainable params sorted by the ranks their gradients are summed over.
// Dense params are replicated over dp and sp, so their gradients sum over the dp x sp group.
// An expert param (split over ep) exists only on the ep rank that holds its expert, so its
// gradient sums over the dp x sp ranks holding the same experts (dp x sp less ep), and the
// global norm adds the ep ranks' sums. The trainer builds one reducer per group.
#pragma once
#include <string>
#include <vector>

#include "core/param.h"
#include "parallel/grid.h"

namespace anvil {

struct GradGroup {
  std::string name;             // "dense" | "expert"
  std::vector<Param*> params;   // in the order given
  Communicator* reduce = nullptr;  // the ranks whose gradients of these params are summed; null: this rank alone
  Communicator* across = nullptr;  // the ranks holding the group's other params (ep), summed by the norm; null: none
};

// The groups of `params`: "dense" first, always (possibly empty), then "expert" when a param is
// split over ep. Communicators of one rank are left null. Without a grid (one process) every
// param is dense and nothing is reduced.
std::vector<GradGroup> grad_groups(const std::vector<Param*>& params, const ProcessGrid* grid);

}  // namespace anvil
