// Lossless chain speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a drafter
// (eval/drafter.h) proposes γ tokens per sequence, the target scores all γ + 1 positions in one
// forward, and a rejection sampler keeps a prefix of the draft so that every committed token is
// distributed exactly as the target's own sampling rule (temperature, top-k, top-p) would draw it.
// Math and test vectors: ALGORITHMS.md §7.
//
// The rejection sampler, per row and round, with p_i / q_i the target's / drafter's processed
// distributions at draft position i (i = 1..γ) and p_{γ+1} the target's after the last draft:
//   for i = 1..γ: accept x_i iff u_i · q_i(x_i) < p_i(x_i), i.e. with probability min(1, p/q);
//   on the first rejection draw the next token from norm(max(0, p_i − q_i)) with u_{γ+1} and stop;
//   when all γ are accepted draw the bonus token from p_{γ+1} with u_{γ+1}.
// Temperature 0 is the exact-match limit: x_i is accepted iff it is the target's argmax, and the
// next token is the target's argmax (no uniforms are read).
//
// RNG discipline: round r of sequence s (its prompt's index in the call) reads the uniforms
// speculative_uniform(seed, kVerifyStream + s, r, i): i = 0..γ−1 for the accept tests of draft
// positions 1..γ, i = γ for the residual or bonus draw — one each, used or not. The drafter draws
// from its own stream (kDraftStream). A sequence's tokens therefore depend only on (seed, s) and
// the models, not on its batch-mates (up to floating-point differences between batch shapes).
#pragma once
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "eval/drafter.h"
#include "eval/generate.h"
#include "models/transformer.h"

namespace anvil {

// Philox streams of sequence s: kVerifyStream + s (the verifier), kDraftStream + s (the drafter).
constexpr uint32_t kVerifyStream = 0x7e3a0000u;
constexpr uint32_t kDraftStream = 0x3c5b0000u;

// Uniform `index` in [0, 1) (53 bits) of round `round` of Philox stream `stream`.
double speculative_uniform(uint64_t seed, uint32_t stream, uint32_t round, uint32_t index);

// E[N] = (1 − α^{γ+1}) / (1 − α): the expected tokens committed per target call (bonus token
// included) when each draft token is accepted independently with probability α; γ + 1 at α = 1.
double expected_tokens_per_call(double alpha, int gamma);
// The wall-time speedup model (1 − α^{γ+1}) / ((1 − α)(γc + 1)), c = drafter call / target call.
double expected_speedup(double alpha, int gamma, double c);

// α = Σ_x min(p(x), q(x)): the probability that a token drawn from q is accepted against p.
double acceptance_probability(const double* p, const double* q, int64_t vocab);

// The token drawn from a distribution (summing to 1) for u in [0, 1): inverse CDF in ascending
// id order, skipping zero-probability tokens.
int32_t draw_token(const double* dist, int64_t vocab, double u);

// The target's argmax of a processed distribution (ties to the lowest id): the greedy verdict.
int32_t argmax_token(const double* dist, int64_t vocab);

// The rejection residual norm(max(0, p − q)) into `out` (size vocab); false (out unspecified) when
// its mass is not positive, which can only be rounding (p == q up to the last bits): the caller
// then draws from p itself.
bool residual_distribution(const double* p, const double* q, int64_t vocab, std::vector<double>& out);

// A verification's inputs for row b of a target call over `positions` tokens per row: the
// target's processed distributions of the row's positions into p ([positions, vocab], from the
// logits [B, positions, vocab]), and unless greedy the verifier's uniforms of sequence `sequence`
// in round `round` into uniforms[0 .. positions). Shared by the chain and the tree decoders.
void verification_inputs(const float* logits, int64_t b, int64_t positions, int64_t vocab, const SamplingConfig& cfg,
                         uint32_t sequence, uint32_t round, bool greedy, std::vector<double>& p,
                         std::vector<double>& uniforms);

// The decoders' (chain, tree, Medusa) timer: seconds on the steady clock since t0.
using DecodeClock = std::chrono::steady_clock;
double seconds_since(DecodeClock::time_point t0);
// The prompts' indices grouped by length: each group decodes as one batch whose rows step together.
std::map<size_t, std::vector<size_t>> prompts_by_length(const std::vector<std::vector<int32_t>>& prompts);

// The decoders' tail (chain, tree, Medusa), per row and round: appends a verdict's tokens (the
// accepted drafts, then the next token) to the row's sequence `seq` and its new tokens `out`,
// stopping after the stop token or at max_new_tokens new tokens; returns how many it appended.
int64_t commit_tokens(const std::vector<int32_t>& tokens, int max_new_tokens, std::optional<int32_t> stop_token,
                      std::vector<int32_t>& seq, std::vector<int32_t>& out);
// ... and after the round: row b (new tokens out[which[b]]) stays active while it has fewer than
// max_new_tokens new tokens and did not end at the stop token. Returns whether any row is active.
bool still_active(std::vector<bool>& active, const std::vector<std::vector<int32_t>>& out,
                  const std::vector<size_t>& which, int max_new_tokens, std::optional<int32_t> stop_token);

// The `count` best tokens of logits z, best first, ties to the lower id (the first is the argmax
// generate() takes); the argmax again where the vocabulary is smaller than count.
std::vector<int32_t> best_tokens(const float* z, int64_t vocab, int count);

// One row of one round, for verify_chain.
struct ChainRow {
  int gamma = 0;
  int64_t vocab = 0;
  const int32_t* draft = nullptr;  // [gamma] the drafted tokens
  const double* q = nullptr;       // [gamma, vocab] the distributions they were drawn from
  const double* p = nullptr;       // [gamma + 1, vocab] the target's at the same positions and one more
};

struct ChainVerdict {
  int accepted = 0;   // draft tokens kept (0..gamma)
  int32_t next = -1;  // the token committed after them (residual draw or bonus)
};

// The rejection sampler above for one row; `uniforms` holds gamma + 1 values in [0, 1) (unread
// when greedy). Throws when a draft token has q = 0 (it cannot have been drawn from q).
ChainVerdict verify_chain(const ChainRow& row, const double* uniforms, bool greedy);

// What one speculative_generate call measured, summed over its batches.
struct SpeculativeStats {
  int gamma = 0;                   // draft tokens per round; a tree's depth (acceptance by level)
  int tree_width = 1;              // 1: a chain; else the width of a tree (eval/tree_speculative.h);
                                   // 0: an irregular tree (Medusa's, eval/medusa_decode.h)
  int64_t tree_nodes = 0;          // an irregular tree's candidates (root excluded)
  int64_t sequences = 0;           // prompts decoded
  int64_t tokens = 0;              // new tokens returned (cut at max_new_tokens and the stop token)
  int64_t committed = 0;           // tokens the verifier committed (accepted + one per verification)
  int64_t target_calls = 0;        // batched verification forwards of the target (prefill excluded)
  int64_t target_row_forwards = 0; // verification forwards times the unfinished rows each served
  int64_t drafter_calls = 0;       // batched forwards of the drafter while proposing (prefill excluded)
  std::vector<int64_t> reached;    // [gamma]: row-rounds in which draft position i + 1 was tested
  std::vector<int64_t> accepted;   // [gamma]: ... and accepted
  double prefill_seconds = 0;      // both models' prompt prefill
  double draft_seconds = 0;        // inside Drafter::propose (forwards and draws)
  double target_seconds = 0;       // the target's verification forwards
  double verify_seconds = 0;       // the target's distributions and the rejection sampler
  double total_seconds = 0;        // wall time of the whole call

  // τ: tokens committed per target forward of a sequence, the bonus token included (γ + 1 when
  // every draft is accepted; 1 when none is).
  double tau() const;
  double acceptance_rate() const;       // accepted / tested draft tokens, all positions
  double acceptance_at(int i) const;    // position i + 1, given positions 1..i were accepted
  double target_forwards_per_token() const;  // target_row_forwards / tokens (plain decoding: 1)
  // c: mean seconds of one drafter forward (propose time / drafter calls) over one target
  // verification forward.
  double drafter_overhead() const;
  double tokens_per_second() const;     // tokens / total_seconds
  std::string summary() const;          // one line for a log
  void add(const SpeculativeStats& other);  // sums another call's counts and times (same gamma)
};

struct SpeculativeResult {
  std::vector<std::vector<int32_t>> tokens;  // new tokens per prompt, as generate() returns them
  SpeculativeStats stats;
};

// A decoder's result before any decoding: an empty row per prompt, stats.gamma = depth (γ, or a
// tree's depth) and zeroed per-position counters over that many draft positions.
SpeculativeResult empty_speculative_result(size_t prompts, int depth);

// speculative_generate's checks of a call (every chain decoder runs them before any work): the
// sampling config, gamma >= 1, the drafter's vocabulary equal to the target's (`mc`), the stop
// token, and every prompt non-empty, in the vocabulary and fitting both models' positions.
void check_speculative_call(const ModelConfig& mc, int64_t drafter_vocab, int64_t drafter_positions,
                            const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                            const SamplingConfig& config, int gamma, std::optional<int32_t> stop_token);

// Generates up to max_new_tokens tokens after each prompt with `drafter` proposing `gamma`
// tokens per target forward; the output follows generate()'s contract (new tokens only, ending
// at stop_token when it is drawn) and, at temperature 0, equals generate()'s tokens. Prompts of
// equal length are decoded as one batch (one batch per length). Checked before any work, one
// error each: gamma >= 1, the drafter's vocabulary equals the target's, every prompt's
// length + max_new_tokens + gamma − 1 fits both models' positions, the sampling config.
SpeculativeResult speculative_generate(TransformerLM& target, Drafter& drafter,
                                       const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                                       const SamplingConfig& config, int gamma,
                                       std::optional<int32_t> stop_token = std::nullopt);

}  // namespace anvil
