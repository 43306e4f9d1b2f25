// Medusa decoding (Cai et al. 2024; ALGORITHMS.md §6): the base model's K Medusa heads propose a
// tree of candidates (eval/medusa_tree.h) from one hidden state, the base scores the root and every
// node in ONE forward under the tree mask, an acceptance rule keeps one root-to-node path per row,
// and the KV cache keeps that path (KVCache::keep). No drafter model: the heads read the hidden
// states the verification forward already computed.
//
// One round, per row (rows of one batch share a prompt length and step together; each accepts
// its own path, so rows' caches differ in length):
//   root   = the row's last committed token, not yet in the cache (after the prefill: the prompt's
//            last token — the prefill feeds the prompt but its last token);
//   h      = the base's final hidden state at the token before the root: the one whose LM head
//            chose the root (after the prefill: the prompt's second-to-last token; later: the
//            previous round's last accepted node, the root when none was accepted);
//   level-d candidates = head d−1's top-k at h (head k at position t predicts token t + k + 2,
//            and the root sits at t + 1), k = tree.max_rank(), placed by medusa_candidates;
//   ONE base forward over [root, nodes] at positions prefix + depth under the ancestor mask,
//            returning the hidden states; logits = the LM head on them, verified per row:
//     greedy   (T = 0): verify_tree greedy — the output equals generate()'s at T = 0, token for token;
//     lossless (T > 0; greedy at T = 0): verify_tree with point-mass candidates (row.q = nullptr) —
//              the committed tokens follow the base's sampling distribution exactly;
//     typical  (T > 0): verify_tree_typical with ε and δ given explicitly (Medusa's own rule, more
//              accepted, NOT distribution-preserving);
//   keep the root and the accepted path in the cache, commit path + next; the next round's root is
//            `next` and its h the hidden state of the path's last node (already computed: the heads
//            cost K small matmuls per round, no extra base forward).
// A one-token prompt has no token before its root: the first round's candidates are the root token
// repeated (any candidates are verified exactly; that round only accepts less).
//
// Uniforms: round r of sequence s reads speculative_uniform(seed, kVerifyStream + s, r, i) for
// node i's test (lossless, as verify_tree) and i = 0 for typical acceptance's final draw.
// Stats (SpeculativeStats, tree_width 0 = an irregular tree of tree_nodes candidates): τ =
// committed tokens per base forward of a row (the next token included: 1 when no candidate is
// accepted, depth + 1 at most); acceptance by level = per head (level d is head d − 1's, given
// the levels above were accepted); target_* are the base's verification forwards, draft_seconds
// the heads' top-k.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "eval/medusa_tree.h"
#include "eval/speculative.h"
#include "models/medusa_heads.h"

namespace anvil {

enum class MedusaMode { Greedy, Lossless, Typical };

// "greedy" | "lossless" | "typical"; a clear error naming `where` otherwise.
MedusaMode parse_medusa_mode(const std::string& name, const std::string& where);
const char* medusa_mode_name(MedusaMode mode);

struct MedusaAcceptance {
  MedusaMode mode = MedusaMode::Lossless;
  // Typical acceptance: p(x) > min(epsilon, delta · exp(−H(p))). Medusa's defaults, passed
  // explicitly (its code swaps them between two functions; ALGORITHMS.md §6).
  double epsilon = 0.09;  // posterior_threshold
  double delta = 0.3;     // posterior_alpha
};

// The tree decoding uses when the user names none: the first `nodes` paths of depth <= num_heads
// of Medusa's mc_sim_7b_63, in its published order (the order its generator added them, most
// probable first, so each prefix of the list is a tree). Small by default: on a CPU every
// verified token costs about as much as a decoding step (a GPU verifies Medusa's 64 for about the
// price of one: pass --tree mc_sim_7b_63 there).
constexpr int kDefaultMedusaNodes = 16;
MedusaTree default_medusa_tree(int num_heads, int nodes = kDefaultMedusaNodes);

// The checks medusa_generate runs before any work, one clear error each: the heads fit the base
// (hidden size, vocabulary, one process), the tree uses no more heads than there are, no
// sliding window (the tree mask has none), the sampling config and the mode against the
// temperature (greedy needs T = 0, typical T > 0 and ε, δ > 0), the prompts' tokens, and that every
// prompt's length + max_new_tokens + tree nodes − 1 fits max_position_embeddings (the cache holds
// the committed tokens and one whole tree).
void check_medusa_decoding(const TransformerLM& base, const MedusaHeads& heads, const MedusaTree& tree,
                           const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                           const SamplingConfig& config, const MedusaAcceptance& acceptance,
                           std::optional<int32_t> stop_token = std::nullopt);

// Generates up to max_new_tokens tokens after each prompt; generate()'s contract (new tokens
// only, ending at stop_token when drawn). Prompts of equal length decode as one batch.
SpeculativeResult medusa_generate(TransformerLM& base, MedusaHeads& heads, const MedusaTree& tree,
                                  const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                                  const SamplingConfig& config, const MedusaAcceptance& acceptance = {},
                                  std::optional<int32_t> stop_token = std::nullopt);

// What the calibrated tree (build_medusa_tree) is built from: accuracy[k][i] = the share of
// positions at which head k's rank-i token equals the base's greedy token it predicts, over the
// base's greedy continuations of `continuation` tokens after each prompt (hidden states from the
// prompt's last token on), i < topk. `positions`, when given, receives the positions scored per head.
std::vector<std::vector<double>> measure_medusa_accuracy(TransformerLM& base, MedusaHeads& heads,
                                                         const std::vector<std::vector<int32_t>>& prompts,
                                                         int continuation, int topk = kMedusaTopK,
                                                         std::vector<int64_t>* positions = nullptr);


// What a Medusa round costs on this machine, for a tree sized to it (build_medusa_tree_for_speed):
// seconds of one verification — a base forward of T tokens under a tree mask after `prefix` cached
// tokens (batch 1) and the LM head on them — for T in `sizes`, one head's work at one position,
// and a plain decoding step (T = 1 without a tree). Medians of `repeats` timings; cost
// at other T is interpolated linearly (the forward's cost is close to affine in T).
struct MedusaCostModel {
  std::vector<int64_t> sizes;
  std::vector<double> verify_seconds;  // per entry of sizes
  double head_seconds = 0;  // one head's logits and top-k at one position (a round runs the tree's depth of them)
  double plain_seconds = 0;
  // Verification of root + nodes, plus the `depth` heads the tree reads.
  double round_seconds(int64_t tree_nodes, int depth) const;
};
MedusaCostModel measure_medusa_cost(TransformerLM& base, MedusaHeads& heads, int64_t max_nodes, int64_t prefix,
                                    int repeats = 7);

// The tree a CPU (or any machine) decodes fastest with: among build_medusa_tree's trees of 1 ..
// max_nodes nodes — each the one before plus the next most probable node — the one whose
// predicted speedup (1 + expected accepted length) · plain step / round cost is largest. A GPU's
// round costs about a step up to dozens of nodes, so the choice grows to max_nodes there; a
// 2-core CPU's grows with every node, so the choice is small.
struct SpeedTree {
  MedusaTree tree;
  double expected_tau = 0;       // 1 + expected accepted length (independence of the heads)
  double predicted_speedup = 0;  // over plain decoding, from the cost model
};
SpeedTree build_medusa_tree_for_speed(const std::vector<std::vector<double>>& accuracy, int max_nodes,
                                      const MedusaCostModel& cost);

}  // namespace anvil
