#include "trainer/optimizer_factory.h"

#include "optim/adamw.h"
#include "optim/cosmos.h"
#include "optim/hybrid.h"
#include "optim/muon.h"
#include "optim/soap.h"

namespace anvil {

std::unique_ptr<Optimizer> make_optimizer(const OptimizerSection& o, const std::vector<Param*>& trainable,
                                          const OptimizerLayout& layout) {
  const bool distributed = layout.dp || layout.tp;
  MatrixOptimizerFactory matrix;
  if (o.name == "adamw") {
    if (!distributed) return std::make_unique<AdamW>(trainable, o.adamw);
  } else if (o.name == "muon") {
    matrix = [&o](std::vector<Param*> ps) -> std::unique_ptr<Optimizer> { return std::make_unique<Muon>(ps, o.muon); };
  } else if (o.name == "soap") {
    matrix = [&o](std::vector<Param*> ps) -> std::unique_ptr<Optimizer> { return std::make_unique<Soap>(ps, o.soap); };
  } else if (o.name == "cosmos") {
    matrix = [&o](std::vector<Param*> ps) -> std::unique_ptr<Optimizer> {
      return std::make_unique<Cosmos>(ps, o.cosmos);
    };
  } else {
    ANVIL_FAIL("optimizer.name '", o.name, "' is unknown — use adamw, muon, soap or cosmos");
  }
  HybridConfig h;
  h.routing.force_adamw = o.force_adamw;
  h.routing.force_matrix = o.force_matrix;
  h.adamw = o.adamw;
  h.adamw_lr_ratio = o.adamw_lr_ratio;
  if (distributed) return std::make_unique<DistributedOptimizer>(trainable, matrix, h, layout);
  return std::make_unique<HybridOptimizer>(trainable, matrix, h, layout.pp);
}

std::string describe_optimizer_groups(Optimizer& optimizer) {
  if (auto* hybrid = dynamic_cast<HybridOptimizer*>(&optimizer)) return format_routing(hybrid->routing());
  if (auto* distributed = dynamic_cast<DistributedOptimizer*>(&optimizer)) {
    const std::string routing = distributed->routing().empty() ? "" : format_routing(distributed->routing());
    return routing + distributed->describe();
  }
  return "";
}

std::map<std::string, int64_t> optimizer_state_bytes_counters(Optimizer& optimizer) {
  std::vector<int64_t> per_rank = {static_cast<int64_t>(optimizer.state_bytes())};
  if (auto* distributed = dynamic_cast<DistributedOptimizer*>(&optimizer)) per_rank = distributed->state_bytes_per_rank();
  std::map<std::string, int64_t> counters;
  int64_t total = 0;
  for (size_t k = 0; k < per_rank.size(); ++k) {
    counters["optimizer.state_bytes.rank" + std::to_string(k)] = per_rank[k];
    total += per_rank[k];
  }
  counters["optimizer.state_bytes.total"] = total;
  return counters;
}

}  // namespace anvil
