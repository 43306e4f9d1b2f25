// Validation loss and the unigram baseline, on one process with a whole (unsplit) model: what
// `anvil eval` reports. The trainer's periodic evaluation runs the same mean through its
// pipeline (Trainer::evaluate) and gives the same number on one process.
#pragma once
#include <cstdint>
#include <vector>

#include "data/loader.h"
#include "models/transformer.h"

namespace anvil {

// The mean over batches of each batch's mean cross-entropy over its non-ignored targets, for
// the first `batches` batches of `loader` from the start of its split (at least one, at most
// what the split holds). Forward only; the model's device takes each batch.
double mean_loss(TransformerLM& model, Loader& loader, int64_t batches, int ignore_index);

// The number of batches mean_loss and Trainer::evaluate read: `batches`, capped by the split's
// global batches, at least one.
int64_t evaluation_batches(const Loader& loader, int64_t batches);

// Entropy (nats/token) of the unigram distribution of `documents`' tokens: the loss of the best
// model that ignores context, the bar a real LM must clear.
double unigram_entropy(const TokenStore& store, const std::vector<int64_t>& documents);

}  // namespace anvil
