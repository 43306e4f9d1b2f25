// Builds the run's optimizer from the config: AdamW over everything, or a matrix
// optimizer (Muon, SOAP, COSMOS) for the hidden matrices with AdamW for embeddings,
// the LM head, norms and biases (as the Muon and COSMOS authors do); under a parallel
// layout, the DistributedOptimizer that takes the same steps (optim/distributed_optimizer.h).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "optim/distributed_optimizer.h"
#include "optim/optimizer.h"
#include "trainer/config.h"

namespace anvil {

// Without layout.dp and layout.tp: AdamW or HybridOptimizer, one process's. With layout.dp (any
// ZeRO stage) or layout.tp: a DistributedOptimizer — constructing it and every step() and
// state() are collectives over dp and tp. layout.pp (a stage's params) only widens the routing
// patterns' check to the whole model (a collective over pp at construction). The caller reduces
// gradients over dp (DataParallel::finish_grad_sync) and clips them over the whole model
// (clip_model_grad_norm, parallel/grad_norm.h: dp, tp and pp) before step(); under ZeRO step()
// ends with the params all-gathered, so nothing else is needed after it.
std::unique_ptr<Optimizer> make_optimizer(const OptimizerSection& config, const std::vector<Param*>& trainable,
                                          const OptimizerLayout& layout = {});

// Which params each group got (and, under a layout, each matrix's owner and every rank's
// state bytes), for the start-up log ("" for a single-process AdamW).
std::string describe_optimizer_groups(Optimizer& optimizer);

// Checkpoint counters for the optimizer's memory: "optimizer.state_bytes.rank<k>" for every rank
// k of its layout (k = dp_rank * tp + tp_rank; one entry, rank0, for a single process) and
// "optimizer.state_bytes.total", their sum. No communication (sizes are gathered at construction).
std::map<std::string, int64_t> optimizer_state_bytes_counters(Optimizer& optimizer);

}  // namespace anvil
