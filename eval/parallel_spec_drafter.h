// ParallelSpec drafting (ALGORITHMS.md §7): a drafter TransformerLM with k learned mask tokens
// (TransformerLM::add_mask_embeddings) proposes γ ≤ k + 1 tokens in ONE forward per round: the
// call feeds the row's newly committed tokens x_..x_t, then MASK_1 .. MASK_{γ-1}. The last real
// token's output drafts x_{t+1}; mask i's output (position t + i) drafts x_{t+1+i}.
//
// Why a plain KV-cached causal call is the group-wise mask of training: the masks come after the
// real tokens of the call, so no real token sees a mask, and mask i sees every real token (the
// cache and the call's) and masks 1..i — exactly the visibility of one anchor's group. Positions
// are the slots (mask i at t + i). After the call each row's cache is truncated back to its real
// tokens, so masks never stay cached.
//
// Draft token i is drawn from q_i, mask i's own distribution, independently of the tokens drawn
// before it (the masks never see them); q_i is what it was drawn from, which is all the lossless
// verifier needs (eval/speculative.h). Draft position i of round r of sequence s uses
// speculative_uniform(seed, kDraftStream + s, r, i); greedy takes the argmax.
#pragma once
#include <memory>
#include <vector>

#include "eval/drafter.h"

namespace anvil {

class ParallelSpecDrafter : public ModelDrafter {
 public:
  // The model must have mask tokens (a checkpoint trained with distill.drafter: parallelspec).
  explicit ParallelSpecDrafter(TransformerLM& model);
  // Refuses γ > mask tokens + 1 (one forward drafts at most that many).
  void begin(const DraftSetup& setup) override;
  DraftBlock propose(uint32_t round, const std::vector<bool>& active) override;
  void commit(const std::vector<bool>& active, const std::vector<int>& accepted,
              const std::vector<int32_t>& next) override;
};

// The drafter a model serves as: ParallelSpec when it has mask tokens, else a standalone LM.
std::unique_ptr<Drafter> make_model_drafter(TransformerLM& model);

}  // namespace anvil
