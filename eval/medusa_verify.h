// Acceptance rules for Medusa's candidate trees (ALGORITHMS.md §6), on the target's distributions
// per node (verification_inputs: already processed at the temperature) and a MedusaTree's DraftTree:
//   - greedy (T = 0): verify_tree(row, nullptr, true) — a child is accepted iff it is the argmax of
//     p at its parent; Medusa's siblings are distinct top-k ranks, so at most one matches;
//   - lossless (T > 0): verify_tree with row.q = nullptr — rejection sampling with the point-mass
//     proposal of each deterministic candidate (eval/speculative_tree.h); the committed tokens follow
//     the target exactly;
//   - typical acceptance (T > 0): verify_tree_typical below — Medusa's own rule, faster (more
//     accepted) but NOT distribution-preserving.
#pragma once
#include <cstdint>

#include "eval/speculative_tree.h"

namespace anvil {

// Medusa's typical-acceptance threshold min(ε, δ·exp(−H(p))) with H = −Σ p·log(p + 1e-5), the
// entropy as Medusa computes it (the 1e-5 keeps log finite at p = 0).
double typical_threshold(const double* p, int64_t vocab, double epsilon, double delta);

// Typical acceptance, Medusa's "fast" mode (utils.py evaluate_posterior): a node x is acceptable
// iff p_parent(x) > typical_threshold(p_parent); the accepted path is the longest root-to-node
// chain of acceptable nodes, ties broken by the largest Σ log p_parent(x) along it (then the lowest
// node index). The next token is drawn with `uniform` (in [0, 1)) from p at the path's last node
// restricted to the tokens with p >= its threshold, renormalised (get_typical_one_token); when the
// threshold exceeds every p there (possible only for δ > 1) the argmax alone is kept.
// row.q is unread. epsilon > 0 and delta > 0, or a clear error.
TreeVerdict verify_tree_typical(const TreeRow& row, double epsilon, double delta, double uniform);

}  // namespace anvil
