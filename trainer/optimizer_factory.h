// Builds the run's optimizer from the config: AdamW over everything, or a matrix
// optimizer (Muon, SOAP, COSMOS) for the hidden matrices with AdamW for embeddings,
// the LM head, norms and biases (as the Muon and COSMOS authors do).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "optim/optimizer.h"
#include "trainer/config.h"

namespace anvil {

std::unique_ptr<Optimizer> make_optimizer(const OptimizerSection& config, const std::vector<Param*>& trainable);

// Which params each group got, for the start-up log ("" for AdamW-only runs).
std::string describe_optimizer_groups(Optimizer& optimizer);

}  // namespace anvil
