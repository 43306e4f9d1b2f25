// What speculative decoding (eval/speculative.h) asks of a drafter, and the first drafter: a
// small standalone language model sharing the target's vocabulary (LMDrafter, the model that
// transformers' `assistant_model` and vLLM's draft-model mode load).
//
// A round of decoding, for a batch of rows (one row per sequence):
//   1. propose(): the drafter proposes γ tokens after each active row's committed tokens, each
//      with the distribution q it was drawn from (after the same temperature / top-k / top-p
//      processing the target's p gets);
//   2. the verifier scores them with the target and keeps a prefix of each row's draft;
//   3. commit(): the drafter hears how many of its tokens each row kept and which token followed
//      them, and rolls its state (its KV cache) back to the committed sequence.
// Rows differ in how much they keep, so every roll-back is per row. A drafter that reads the
// target's hidden states (EAGLE) or proposes a tree extends this interface; the chain drafter
// here needs neither.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "eval/generate.h"
#include "models/kv_cache.h"
#include "models/transformer.h"

namespace anvil {

// One batch of sequences handed to a drafter; every prompt has the same length.
struct DraftSetup {
  std::vector<std::vector<int32_t>> prompts;  // row b's prompt
  std::vector<uint32_t> sequences;            // row b's RNG sequence (its prompt's index in the call)
  int gamma = 0;                              // draft tokens per round
  int64_t max_len = 0;                        // the most slots a row fills (prompt, committed and drafted tokens)
  SamplingConfig sampling;                    // the decoding rule q is processed with and drawn from
};

// What propose() returns for the batch: γ tokens per row and their distributions. Rows that are
// not active carry placeholders the verifier ignores.
struct DraftBlock {
  int gamma = 0;
  int64_t vocab = 0;
  std::vector<int32_t> tokens;  // [B, gamma]
  std::vector<double> q;        // [B, gamma, vocab]: q of row b at draft position i, summing to 1
  int64_t forwards = 0;         // batched forward calls the drafter ran for this block
};

// Draft position `position` of round `round` of RNG sequence `sequence`, drawn from q (already
// processed by `sampling`): the argmax when greedy, else draw_token with
// speculative_uniform(seed, kDraftStream + sequence, round, position) — every drafter draws so.
int32_t draw_draft_token(const std::vector<double>& q, const SamplingConfig& sampling, uint32_t sequence,
                         uint32_t round, int position);

// Checks a batch handed to begin() by drafter `who`: gamma >= 1, one RNG sequence per prompt, and
// prompts sharing one length >= 1. Returns that length.
int64_t check_draft_setup(const DraftSetup& setup, const char* who);

// The per-row state every chain drafter keeps: the committed tokens, how far its cache has been
// fed, and the last block's drafts (which commit() appends).
struct DraftRows {
  DraftSetup setup;
  std::vector<std::vector<int32_t>> committed;  // row b: prompt + committed tokens
  std::vector<int64_t> fed;                     // row b: how much of its sequence the drafter's cache holds
  std::vector<int32_t> drafted;                 // the last block's tokens [B, gamma]

  // Starts a batch: every row holds its prompt, nothing fed yet.
  void begin(const DraftSetup& batch);
  int64_t batch() const { return static_cast<int64_t>(committed.size()); }
  // An empty block for this batch (placeholder tokens 0, q all zeros).
  DraftBlock empty_block(int64_t vocab) const;
  // Row b's draft position i from the logits z: writes q into the block and returns the token
  // (an inactive row gets its last committed token as a placeholder and no q).
  int32_t draft(DraftBlock& block, int64_t b, int i, const float* z, bool active, uint32_t round) const;
  // Row b kept n of its drafts and then committed `next`: appends them to its committed tokens.
  void commit(int64_t b, int n, int32_t next, const char* who);
};

// Feeds every row's prompt but its last token into a fresh cache (the first proposal feeds the
// last), as the standalone and ParallelSpec drafters start.
void prefill_prompts(TransformerLM& model, KVCache& kv, DraftRows& rows);

class Drafter {
 public:
  virtual ~Drafter() = default;
  virtual int64_t vocab_size() const = 0;
  // The most positions one sequence may reach in the drafter (prompt + committed + drafted).
  virtual int64_t max_positions() const = 0;
  // Starts a batch; may prefill the prompts.
  virtual void begin(const DraftSetup& setup) = 0;
  // Round `round` (0, 1, ...): γ draft tokens after each row's committed tokens. Inactive rows
  // (finished sequences; a row never becomes active again) still ride along in the batch but
  // get placeholders, and must not use up the drafter's room.
  virtual DraftBlock propose(uint32_t round, const std::vector<bool>& active) = 0;
  // The verdict on the last block: active row b kept accepted[b] of its draft tokens and then
  // committed next[b]. Inactive rows commit nothing.
  virtual void commit(const std::vector<bool>& active, const std::vector<int>& accepted,
                      const std::vector<int32_t>& next) = 0;
  // The target layers this drafter reads (an EAGLE drafter), or null: the decoder passes them to
  // every target forward — the prompt's prefill before begin(), each verification before
  // commit() — so the drafter finds the target's states of the tokens just fed there.
  virtual HiddenTaps* target_taps() { return nullptr; }
};

// A drafter that is one TransformerLM with a KV cache of its own (the standalone and ParallelSpec
// drafters): its vocabulary and positions are the model's.
class ModelDrafter : public Drafter {
 public:
  int64_t vocab_size() const override { return model_.config().vocab_size; }
  int64_t max_positions() const override { return model_.config().max_position_embeddings; }

 protected:
  explicit ModelDrafter(TransformerLM& model) : model_(model) {}
  TransformerLM& model_;
  std::unique_ptr<KVCache> kv_;
  DraftRows rows_;  // fed: how many of the committed tokens the cache holds
};

// A standalone TransformerLM as the drafter. It keeps its own KV cache; per row, the cache holds
// a prefix of the committed tokens and the rest are "pending" (fed at the next round's first
// call). After a round a row has one pending token (the verifier's next token) or, when all γ
// drafts were accepted, two (the last draft, never fed, and the bonus token). The first call of a
// round feeds the same count for every row, so a row with fewer pending tokens is rolled back one
// slot further and re-feeds its last committed token. The draws: draft position i of round r of
// sequence s uses speculative_uniform(seed, kDraftStream + s, r, i); greedy takes the argmax.
class LMDrafter : public ModelDrafter {
 public:
  explicit LMDrafter(TransformerLM& model) : ModelDrafter(model) {}
  void begin(const DraftSetup& setup) override;
  DraftBlock propose(uint32_t round, const std::vector<bool>& active) override;
  void commit(const std::vector<bool>& active, const std::vector<int>& accepted,
              const std::vector<int32_t>& next) override;
};

}  // namespace anvil
