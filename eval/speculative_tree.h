// Tree speculative sampling (SpecInfer's multi-step speculative sampling, Miao et al. 2024): the
// drafter proposes a tree of candidates — every node has `width` children drawn i.i.d. WITH
// replacement from the drafter's distribution q at that node, `depth` levels deep — the target
// scores every node in one forward under a tree mask (each node sees the committed prefix and its
// ancestors only), and recursive rejection sampling keeps one root-to-node path.
//
// The sampler, per row and round, at the current node (the root first) with target p and
// residual r = p:
//   for each child c (in order) with token x: accept iff u_c · q(x) < r(x), i.e. with probability
//     min(1, r(x)/q(x)) — then continue at c; else r <- norm(max(0, r − q)) and try the next child;
//   when every child is rejected draw the next token from r with u_final and stop;
//   at a leaf of the tree (every node of the path accepted) draw the bonus token from p there.
// Why it is lossless: trying child c is one chain speculative step with target r and a fresh
// draft x ~ q (the children are i.i.d. from q), so its accept-or-continue outcome reproduces r
// exactly when the continuation yields r' = norm(max(0, r − q)) (Leviathan et al.'s residual);
// by induction over the children the node's committed token follows p. A child's subtree was
// drawn from q at that child independently of its siblings' tests, so the same argument holds
// one level down. A rejected token x has r'(x) = 0 (it is only rejected where r(x) < q(x)), so a
// duplicate sibling is rejected surely: with replacement costs nodes, not exactness.
// Width 1 is the chain sampler (verify_chain) draw for draw: the same tests with the same
// uniforms, and the residual of the only child. Temperature 0 is the exact-match limit: accept the
// first child equal to the target's argmax; next/bonus token = the argmax (no uniforms read).
// Both p and q come processed by the same sampling_distribution (temperature, top-k, top-p).
//
// RNG discipline: round r of sequence s reads speculative_uniform(seed, kVerifyStream + s, r, i),
// i = c − 1 for the test of node c (1..n) and i = n for the final draw; the drafter draws child
// token of node c with speculative_uniform(seed, kDraftStream + s, r, c − 1). With width 1 both
// are the chain decoder's indices.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace anvil {

// A draft tree in breadth-first order: node 0 is the root (the last committed token, no draft),
// nodes 1..n the drafts; a node's children are consecutive and in order. Complete trees (width ×
// depth, the drafter's) and irregular ones (Medusa's candidate trees, eval/medusa_tree.h) alike.
struct DraftTree {
  int width = 0;                        // children of every inner node of a complete tree; 0 when irregular
  int depth = 0;                        // the deepest level
  std::vector<int32_t> parent;          // [n + 1]: parent[0] = -1, parent[c] < c
  std::vector<int32_t> level;           // [n + 1]: depth of the node, 0 for the root
  std::vector<int32_t> first_child;     // [n + 1]: index of the first child, or -1 for a leaf
  std::vector<int32_t> children;        // [n + 1]: how many children (first_child .. + children - 1)

  // width >= 1, depth >= 1, at most kMaxNodes drafts; a clear error otherwise.
  static DraftTree complete(int width, int depth);
  // Any tree from its parents in breadth-first order (parent[0] = -1, then non-decreasing parents,
  // each < its child), 1..kMaxNodes drafts; errors name `where`. width = 0 unless it is complete.
  static DraftTree from_parents(std::vector<int32_t> parent, const std::string& where);
  static constexpr int64_t kMaxNodes = 4096;
  int64_t nodes() const { return static_cast<int64_t>(parent.size()) - 1; }  // drafts, root excluded
  int64_t size() const { return static_cast<int64_t>(parent.size()); }       // with the root
  bool leaf(int32_t node) const { return first_child[node] < 0; }
  // 1 for node j an ancestor of node i or i itself (the tree mask row of i), [size, size].
  std::vector<uint8_t> ancestor_mask() const;
};

// Draft nodes of a width × depth tree (width + width^2 + ... + width^depth), without building it.
int64_t draft_tree_nodes(int width, int depth);

// One row of one round, for verify_tree; every array is indexed by node (0 = root).
struct TreeRow {
  const DraftTree* tree = nullptr;
  int64_t vocab = 0;
  const int32_t* tokens = nullptr;  // [size]: tokens[c] the draft at node c (tokens[0] unused)
  // [size, vocab]: q at node i, that i's children were drawn from (leaves' unused); nullptr when
  // every child is a deterministic candidate (Medusa's top-k), i.e. q = the point mass on it.
  const double* q = nullptr;
  const double* p = nullptr;        // [size, vocab]: the target's distribution after node i's path
};

struct TreeVerdict {
  std::vector<int32_t> path;  // the accepted nodes, root excluded, one per level from 1
  int32_t next = -1;          // the token committed after them (residual draw or bonus)
};

// The recursive rejection sampler above; `uniforms` holds size() values in [0, 1) (unread when
// greedy). Throws when a draft token has q = 0 at its parent.
//
// Deterministic candidates (row.q == nullptr; Medusa's trees, whose children are the heads' top-k
// tokens, fixed before the target scores anything): each child x is the point-mass proposal
// q = δ_x, so its test is "accept iff u < r(x)" and a rejection leaves r' = norm(max(0, r − δ_x)) =
// r with x zeroed, renormalised. Lossless by the argument above: one chain step with target r and a
// point-mass draft commits x with probability r(x) and otherwise a token from r', i.e. y ≠ x with
// probability (1 − r(x)) · r(y) / (1 − r(x)) = r(y) — the node's committed token follows p. The
// candidates do not depend on the uniforms, so the accepted child's subtree continues the same
// argument with p at that child. A repeated sibling has r(x) = 0 after its first rejection and is
// rejected surely (exact, only wasted).
TreeVerdict verify_tree(const TreeRow& row, const double* uniforms, bool greedy);

}  // namespace anvil
