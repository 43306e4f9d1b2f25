// EagleChainDrafter: the EAGLE drafter (models/eagle_drafter.h) proposing a chain of γ tokens
// for speculative decoding (eval/speculative.h), drafting from the target's hidden states of the
// accepted prefix (eval/drafter.h's interface; target_taps() asks the decoder for them).
//
// Per row, with committed tokens c_0 .. c_{L-1}: the target has fed c_0 .. c_{L-2} (its cache
// holds all committed tokens but the last), so its tapped states, fused into features f_t, are
// known for t <= L-2. The drafter's KV cache holds a prefix of the "columns" t = 0 .. L-2, each
// the pair (f_t, c_{t+1}) at position t, exactly as step 0 of training reads them. A round
// feeds the columns not yet in the cache (every row feeds the same count: a row with fewer
// rolls back further and re-feeds), whose last output h drafts x_1; then γ - 1 chain calls feed
// (h, x_i) at the next positions, as training-time-test steps 1.. do. commit() appends the
// accepted tokens, fuses the verification's taps of the positions just confirmed (the last
// committed token and the accepted drafts) into new features, and truncates the drafter's cache
// to the columns built from target features (the chain entries are dropped).
// Draws: draft position i of round r of sequence s uses speculative_uniform(seed, kDraftStream +
// s, r, i) as LMDrafter does; greedy takes the argmax. Prompts need at least two tokens (the
// first column needs a target state and the token after it).
#pragma once
#include <memory>
#include <vector>

#include "eval/drafter.h"
#include "models/eagle_drafter.h"

namespace anvil {

class EagleChainDrafter : public Drafter {
 public:
  // drafter: built on the same target the decoder verifies with (its embedding and head).
  explicit EagleChainDrafter(EagleDrafter& drafter);
  int64_t vocab_size() const override { return drafter_.body().config().vocab_size; }
  int64_t max_positions() const override { return drafter_.target().config().max_position_embeddings; }
  void begin(const DraftSetup& setup) override;
  DraftBlock propose(uint32_t round, const std::vector<bool>& active) override;
  void commit(const std::vector<bool>& active, const std::vector<int>& accepted,
              const std::vector<int32_t>& next) override;
  HiddenTaps* target_taps() override { return &taps_; }

 private:
  // Fuses the taps' positions [from, to) of row b onto that row's features.
  void append_features(const Tensor& fused, int64_t b, int64_t from, int64_t to);

  EagleDrafter& drafter_;
  HiddenTaps taps_;
  std::unique_ptr<KVCache> kv_;
  DraftRows rows_;                             // fed: the columns each row's cache holds
  std::vector<std::vector<float>> features_;  // row b: f_t, h floats per column t (t <= L - 2)
};

}  // namespace anvil
