#include "parallel/grad_groups.h"

namespace anvil {

std::vector<GradGroup> grad_groups(const std::vector<Param*>& params, const ProcessGrid* grid) {
  auto shared = [](Communicator& c) { return c.size() > 1 ? &c : nullptr; };
  GradGroup dense{"dense", {}, grid ? shared(grid->data_sequence_comm()) : nullptr, nullptr};
  GradGroup expert{"expert", {}, grid ? shared(grid->expert_data_sequence_comm()) : nullptr,
                   grid ? shared(grid->comm(Axis::EP)) : nullptr};
  for (Param* p : params) (p->shard.over(Axis::EP) ? expert : dense).params.push_back(p);
  std::vector<GradGroup> out{std::move(dense)};
  if (!expert.params.empty()) out.push_back(std::move(expert));
  return out;
}

}  // namespace anvil
