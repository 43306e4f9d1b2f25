// The router half of the CLI (task.name: router runs): `anvil eval --routers CKPT` (validation
// loss, perplexity and capacity of a backbone with routers) and the loading behind `anvil generate
// --routers CKPT` (apps/anvil.cpp parses the flags). The backbone is --checkpoint when given (it
// must be the architecture the routers were trained on), else the router run's model.init_from.
#pragma once
#include <string>
#include <vector>

#include "data/loader.h"
#include "trainer/load_model.h"

namespace anvil {

// --routers ROUTERS [--checkpoint BACKBONE]: trainer/router_backbone.h load_routed_model.
LoadedModel load_router_flags(const std::string& routers, const std::string& backbone,
                              const std::vector<std::string>& overrides);

// A routed model's mean validation loss over `batches` batches of `loader` (as mean_loss,
// eval/perplexity.h) and its capacity: the share of router units that ran over those batches.
struct RoutedEvaluation {
  double loss = 0;
  double capacity = 1.0;
};
RoutedEvaluation evaluate_routed(TransformerLM& model, Loader& loader, int64_t batches, int ignore_index);

// `anvil eval --routers ROUTERS [--checkpoint BACKBONE]`: prints loss, perplexity and capacity.
int run_eval_routers(const std::string& routers, const std::string& backbone, int64_t batches,
                     const std::vector<std::string>& overrides);

}  // namespace anvil
