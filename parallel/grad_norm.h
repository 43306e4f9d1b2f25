// The global gradient norm of a model split over the process grid, and clipping by it.
#pragma once
#include "models/transformer.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"

namespace anvil {

// Every gradient element counts once: a tensor-parallel shard on its own rank, a tp replica
// (norms, row-parallel biases: equal on every tp rank) on tp rank 0; pipeline stages hold
// disjoint params and are summed over `pp`, the last stage's copy of a tied embedding counting
// on the first stage only; with `dp`, its reduced grads (ZeRO shards summed over the data
// group, DataParallel::grad_sum_squares), else the model's trainable grads. A collective over
// the model's tp communicator, pp and dp's group; null ones are not there.
double model_grad_norm(TransformerLM& model, DataParallel* dp, Communicator* pp);

// model_grad_norm, then scales the gradients (dp's reduced ones when given) so the norm is at
// most max_norm, as optim/clip_grad_norm; returns the norm before clipping. max_norm <= 0
// only measures.
double clip_model_grad_norm(TransformerLM& model, DataParallel* dp, Communicator* pp, double max_norm);

}  // namespace anvil
