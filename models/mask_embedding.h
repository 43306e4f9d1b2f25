// ParallelSpec's learned [MASK]_i tokens (ALGORITHMS.md §7): k embeddings beside the token
// embedding of a drafter, so that one forward over [context, MASK_1 .. MASK_k] drafts k + 1
// tokens. The mask tokens have ids past the vocabulary: mask i (from 0) is id vocab_size + i.
// Only a ParallelSpec drafter has them (TransformerLM::add_mask_embeddings); every other model
// embeds through its VocabParallelEmbedding alone, unchanged.
#pragma once
#include <string>

#include "models/module.h"
#include "models/tensor_parallel_layers.h"

namespace anvil {

// The name of the mask table in a model's params and checkpoints (anvil-only: `anvil convert`
// exports the model without it).
constexpr const char* kMaskEmbeddingName = "parallelspec.mask_embed";

// The embedding of ids in [0, vocab + k): the token embedding's row for a real id (wte's
// shard under tp, all-reduced as wte does), the mask table's row for a mask id. The mask table
// [k, hidden] is replicated over tp (every tp rank sees the same ids and the same dx).
class MaskTokenEmbedding : public Module {
 public:
  MaskTokenEmbedding(VocabParallelEmbedding& tokens, int64_t masks, int64_t dim, Communicator* tp);
  Tensor forward(const Tensor& ids, Cache& c) override;
  // Accumulates the gradients of the token embedding and the mask table; returns an undefined dx.
  Tensor backward(const Tensor& dy, Cache& c) override;
  Tensor infer(const Tensor& ids) override;
  // The mask table only (the token embedding is listed by its own module).
  void collect_params(std::vector<Param*>& out) override { out.push_back(&weight); }

  int64_t masks() const { return weight.value.size(0); }
  int32_t mask_id(int64_t i) const { return static_cast<int32_t>(tokens_.num_embeddings() + i); }

  Param weight;  // [k, dim]

 private:
  VocabParallelEmbedding& tokens_;
  Communicator* tp_;
};

}  // namespace anvil
