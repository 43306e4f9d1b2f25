#include "trainer/optimizer_factory.h"

#include "optim/adamw.h"
#include "optim/cosmos.h"
#include "optim/hybrid.h"
#include "optim/muon.h"
#include "optim/soap.h"

namespace anvil {

std::unique_ptr<Optimizer> make_optimizer(const OptimizerSection& o, const std::vector<Param*>& trainable) {
  if (o.name == "adamw") return std::make_unique<AdamW>(trainable, o.adamw);
  MatrixOptimizerFactory matrix;
  if (o.name == "muon") {
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
  return std::make_unique<HybridOptimizer>(trainable, matrix, h);
}

std::string describe_optimizer_groups(Optimizer& optimizer) {
  auto* hybrid = dynamic_cast<HybridOptimizer*>(&optimizer);
  return hybrid ? format_routing(hybrid->routing()) : "";
}

}  // namespace anvil
