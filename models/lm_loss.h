// CrossEntropyLoss: the language-modelling loss as its own module, separate from the trunk and
// the head (docs/architecture.md "Seams": trunk and head). It scores (vocab-parallel) logits against
// targets and returns the gradient of the logits; tasks compose it with a head of their choice.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "models/cache.h"
#include "parallel/communicator.h"

namespace anvil {

class CrossEntropyLoss {
 public:
  // tp: the logits' vocabulary split (null: whole rows), vocab_start the first id of this rank's
  // shard, vocab_size the full vocabulary. sp: under Ulysses sequence parallelism every rank
  // holds a slice of each sequence, and the mean is taken over the whole sp group's tokens
  // (the same value on every sp rank, equal to one process's loss on the full sequences).
  CrossEntropyLoss(Communicator* tp, int64_t vocab_start, int64_t vocab_size, Communicator* sp);

  // The mean cross-entropy over targets != ignore_index. logits [..., V / tp] in the compute
  // dtype, targets i32 [...] of the same leading shape. Saves the logits and the per-row
  // log-sum-exp in c for backward.
  float forward(const Tensor& logits, const Tensor& targets, Cache& c, int ignore_index = -100) const;
  // The tokens the forward's mean was over (under sp: summed over the group).
  static double token_count(const Cache& c);
  // The gradient of loss_scale * (summed token losses) / loss_tokens with respect to the saved
  // logits, written in place over them and returned; loss_tokens -1 = the forward's own count
  // (the mean). Data parallelism passes the count over every rank's micro-batch.
  Tensor backward(Cache& c, float loss_scale = 1.0f, int64_t loss_tokens = -1) const;

 private:
  Communicator* tp_;
  int64_t vocab_start_, vocab_size_;
  Communicator* sp_;
};

}  // namespace anvil
