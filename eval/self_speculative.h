// Early-exit self-speculative decoding (LayerSkip, Elhoushi et al. 2024) on any model, without
// retraining: the drafter is the target itself cut after its first E layers — layers 0 .. E-1,
// then the final norm and the LM head — and the full model verifies the drafts with the lossless
// chain verifier of eval/speculative.h (verify_chain, the same RNG streams), so greedy output
// equals generate()'s and sampled output follows the full model's distribution exactly; only the
// speed depends on how often the early exit agrees with the full model.
//
// One KV cache serves both (LayerSkip's cache reuse). Per row and round, with c the last
// committed token (the cache holds every committed token but c, n0 slots) and d_1 .. d_γ the drafts:
//   draft:   γ + 1 single-token forwards of layers 0 .. E-1 on c, d_1, .., d_γ at slots
//            n0 .. n0 + γ; the first γ also run the final norm and head and draw d_1 .. d_γ.
//            They write layers 0 .. E-1's keys/values there and keep each token's layer E-1
//            output (the "exit hidden state", [B, γ + 1, hidden]).
//   verify:  the rows are cut back to n0 slots and layers E .. L-1 run once on the kept exit
//            hidden states of c, d_1 .. d_γ, writing layers E .. L-1 at slots n0 .. n0 + γ, then the
//            final norm and head score all γ + 1 positions.
// So the first E layers of every token run exactly once (in the draft; the last draft d_γ's
// E-layer pass is the part of its verification LayerSkip also runs up front), and layers
// E .. L-1 once per verification. Layers 0 .. E-1 are causal in their own inputs, so what the
// draft computed for c, d_1 .. d_γ is what a full forward of the same tokens would compute there.
// Roll back: with n drafts accepted the row keeps slots 0 .. n0 + n (c, d_1 .. d_n: every layer
// filled, the draft's layers 0 .. E-1 and the verification's E .. L-1) and truncates the rest; the
// token committed after them becomes the next round's c. Nothing else is stored per row, so a
// rejected draft leaves no trace beyond the truncated slots, which the next round overwrites.
// A finished row rides along from slot 0 (as in speculative_generate) and never runs out of room.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "eval/drafter.h"
#include "eval/speculative.h"
#include "models/kv_cache.h"
#include "models/transformer.h"

namespace anvil {

// The errors of a bad early exit, before any work: exit_layer in [1, L-1] (L: the model's layers;
// E = L would draft with the full model) and gamma >= 1; `who` names the caller.
void check_self_speculation(const TransformerLM& model, int64_t exit_layer, int gamma, const char* who);

// One batch of prompts of one length, decoded round by round (self_speculative_generate runs
// these; tests drive them to look at the shared cache between rounds).
class SelfSpeculativeBatch {
 public:
  // Builds the cache (max_len slots per row), prefills every prompt but its last token with the
  // full model. sequences[b]: row b's RNG sequence (its prompt's index in the call).
  SelfSpeculativeBatch(TransformerLM& model, int64_t exit_layer, int gamma, const SamplingConfig& sampling,
                       const std::vector<std::vector<int32_t>>& prompts, const std::vector<uint32_t>& sequences,
                       int64_t max_len, SpeculativeStats& stats);
  // Round `round` for the active rows: drafts, verifies, commits and rolls back as described above.
  // Returns each active row's committed tokens of this round (accepted drafts, then the verifier's
  // next token); empty for inactive rows.
  std::vector<std::vector<int32_t>> step(uint32_t round, const std::vector<bool>& active);

  // Row b's prompt and every token committed since (the cache holds all but the last).
  const std::vector<int32_t>& committed(int64_t b) const { return rows_.committed[static_cast<size_t>(b)]; }
  KVCache& cache() { return kv_; }  // the shared cache (tests compare it with a full recompute)
  int64_t batch() const { return rows_.batch(); }

 private:
  TransformerLM& model_;
  int64_t exit_layer_;
  int gamma_;
  KVCache kv_;
  DraftRows rows_;
  SpeculativeStats& stats_;
};

// speculative_generate's contract (eval/speculative.h) with the model's first exit_layer layers
// as its own drafter: new tokens per prompt, ending at stop_token; at temperature 0 equal to
// generate()'s. Stats: drafter_calls counts the γ + 1 early-exit forwards per round, target_calls
// the verification forwards (layers E .. L-1 and the head), so c compares those two.
// Checked before any work: check_self_speculation, the sampling config, the prompts (non-empty,
// in the vocabulary, prompt + max_new_tokens + gamma - 1 positions fitting the model).
SpeculativeResult self_speculative_generate(TransformerLM& model, int64_t exit_layer,
                                            const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                                            const SamplingConfig& config, int gamma,
                                            std::optional<int32_t> stop_token = std::nullopt);

// `anvil generate --early-exit E`: complete_text (eval/generate.h) decoded self-speculatively, the
// prompt followed by up to `tokens` new tokens (fewer when prompt + tokens + gamma - 1 would pass
// the model's positions), stopping at `eos` (>= 0). `stats` receives the decoding's measurements.
std::string self_speculative_complete_text(TransformerLM& model, int64_t exit_layer, const Tokenizer& tokenizer,
                                           const std::string& prompt, int64_t tokens, const SamplingConfig& config,
                                           int gamma, int32_t eos, SpeculativeStats* stats = nullptr);

}  // namespace anvil
