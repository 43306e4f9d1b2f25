// Tree speculative sampling: the draft tree's shape and the recursive rejection sampler (see the
// header). The chain's helpers (argmax_token, residual_distribution, draw_token) are reused so
// that width 1 is the chain sampler exactly.
#include "eval/speculative_tree.h"

#include "core/error.h"
#include "eval/speculative.h"

namespace anvil {

int64_t draft_tree_nodes(int width, int depth) {
  int64_t level = 1, total = 0;
  for (int d = 0; d < depth; ++d) {
    level *= width;
    total += level;
    if (total > DraftTree::kMaxNodes) return total;  // large enough to be refused; no overflow
  }
  return total;
}

DraftTree DraftTree::complete(int width, int depth) {
  ANVIL_CHECK(width >= 1 && depth >= 1, "draft tree: width and depth must be >= 1, got width ", width, " and depth ",
              depth, " — width 1 is the chain of `depth` drafts");
  const int64_t n = draft_tree_nodes(width, depth);
  ANVIL_CHECK(n <= kMaxNodes, "draft tree: width ", width, " and depth ", depth, " make ", n,
              n > kMaxNodes ? " or more" : "", " draft nodes, more than the ", kMaxNodes,
              " one verification may score — lower the width or the depth");
  DraftTree t;
  t.width = width, t.depth = depth;
  t.parent = {-1};
  t.level = {0};
  // Breadth first: the children of node i (in order of i) follow all earlier nodes.
  for (int32_t i = 0; static_cast<int64_t>(t.parent.size()) <= n; ++i) {
    if (t.level[i] == depth) continue;
    for (int c = 0; c < width; ++c) {
      t.parent.push_back(i);
      t.level.push_back(t.level[i] + 1);
    }
  }
  t.first_child.assign(t.parent.size(), -1);
  for (size_t c = t.parent.size(); c-- > 1;) t.first_child[t.parent[c]] = static_cast<int32_t>(c);
  return t;
}

std::vector<uint8_t> DraftTree::ancestor_mask() const {
  const int64_t S = size();
  std::vector<uint8_t> mask(static_cast<size_t>(S * S), 0);
  for (int64_t i = 0; i < S; ++i)
    for (int64_t j = i; j >= 0; j = parent[j]) mask[i * S + j] = 1;
  return mask;
}

TreeVerdict verify_tree(const TreeRow& row, const double* uniforms, bool greedy) {
  ANVIL_CHECK(row.tree && row.vocab >= 1 && row.tree->nodes() >= 1, "verify_tree: needs a tree of >= 1 draft and a "
              "vocabulary of >= 1 token");
  const DraftTree& tree = *row.tree;
  const int64_t V = row.vocab, n = tree.nodes();
  TreeVerdict v;
  std::vector<double> r, next_r;
  int32_t node = 0;
  while (!tree.leaf(node)) {
    const double* p = row.p + node * V;
    const double* q = row.q + node * V;
    const int32_t first = tree.first_child[node];
    int32_t kept = -1;
    if (greedy) {
      const int32_t best = argmax_token(p, V);
      for (int32_t c = first; c < first + tree.width && kept < 0; ++c)
        if (row.tokens[c] == best) kept = c;
      if (kept < 0) {
        v.next = best;
        return v;
      }
    } else {
      r.assign(p, p + V);
      for (int32_t c = first; c < first + tree.width; ++c) {
        const int32_t x = row.tokens[c];
        ANVIL_CHECK(x >= 0 && x < V, "verify_tree: draft node ", c, " is token ", x, ", outside the vocabulary [0, ", V,
                    ")");
        ANVIL_CHECK(q[x] > 0, "verify_tree: draft node ", c, " (id ", x, ") has q = 0 at its parent — the drafter "
                    "must draw its tokens from the q it reports");
        if (uniforms[c - 1] * q[x] < r[x]) {  // probability min(1, r(x) / q(x))
          kept = c;
          break;
        }
        // Rejected: the next child is tested against the residual (kept as is in the rounding case).
        if (residual_distribution(r.data(), q, V, next_r)) r.swap(next_r);
      }
      if (kept < 0) {
        v.next = draw_token(r.data(), V, uniforms[n]);
        return v;
      }
    }
    v.path.push_back(kept);
    node = kept;
  }
  const double* bonus = row.p + node * V;
  v.next = greedy ? argmax_token(bonus, V) : draw_token(bonus, V, uniforms[n]);
  return v;
}

}  // namespace anvil
