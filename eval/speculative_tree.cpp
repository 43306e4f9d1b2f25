// Tree speculative sampling: the draft tree's shape and the recursive rejection sampler (see the
// header). The chain's helpers (argmax_token, residual_distribution, draw_token) are reused so
// that width 1 is the chain sampler exactly.
#include "eval/speculative_tree.h"

#include <algorithm>

#include "core/error.h"
#include "eval/speculative.h"

namespace anvil {

namespace {

// norm(max(0, r − δ_x)) = r with x zeroed, renormalised; r kept when nothing else has mass
// (rounding only: r(x) = 1 is accepted surely).
void point_mass_residual(std::vector<double>& r, int32_t x) {
  double mass = 0;
  for (size_t i = 0; i < r.size(); ++i)
    if (static_cast<int32_t>(i) != x) mass += r[i];
  if (!(mass > 0)) return;
  r[x] = 0;
  for (double& v : r) v /= mass;
}

}  // namespace

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
  // Breadth first: the children of node i (in order of i) follow all earlier nodes.
  std::vector<int32_t> parent = {-1}, level = {0};
  for (int32_t i = 0; static_cast<int64_t>(parent.size()) <= n; ++i) {
    if (level[i] == depth) continue;
    for (int c = 0; c < width; ++c) {
      parent.push_back(i);
      level.push_back(level[i] + 1);
    }
  }
  DraftTree t = from_parents(std::move(parent), "draft tree");
  t.width = width;
  return t;
}

DraftTree DraftTree::from_parents(std::vector<int32_t> parent, const std::string& where) {
  const int64_t n = static_cast<int64_t>(parent.size()) - 1;
  ANVIL_CHECK(n >= 1 && n <= kMaxNodes, where, ": a draft tree needs 1 to ", kMaxNodes, " draft nodes, got ", n,
              n > kMaxNodes ? " — use a smaller tree" : "");
  ANVIL_CHECK(parent[0] == -1, where, ": node 0 is the root (parent -1), got parent ", parent[0]);
  for (int64_t c = 1; c <= n; ++c)
    ANVIL_CHECK(parent[c] >= 0 && parent[c] < c && parent[c] >= parent[c - 1], where, ": node ", c, " has parent ",
                parent[c], " — parents must precede their children and be non-decreasing (breadth-first order, "
                "siblings consecutive)");
  DraftTree t;
  t.parent = std::move(parent);
  t.level.assign(static_cast<size_t>(n + 1), 0);
  t.first_child.assign(static_cast<size_t>(n + 1), -1);
  t.children.assign(static_cast<size_t>(n + 1), 0);
  for (int64_t c = n; c >= 1; --c) {
    t.first_child[t.parent[c]] = static_cast<int32_t>(c);
    ++t.children[t.parent[c]];
  }
  for (int64_t c = 1; c <= n; ++c) {
    t.level[c] = t.level[t.parent[c]] + 1;
    t.depth = std::max(t.depth, t.level[c]);
  }
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
    const double* q = row.q ? row.q + node * V : nullptr;  // nullptr: point masses on the candidates
    const int32_t first = tree.first_child[node], last = first + tree.children[node];
    int32_t kept = -1;
    if (greedy) {
      const int32_t best = argmax_token(p, V);
      for (int32_t c = first; c < last && kept < 0; ++c)
        if (row.tokens[c] == best) kept = c;
      if (kept < 0) {
        v.next = best;
        return v;
      }
    } else {
      r.assign(p, p + V);
      for (int32_t c = first; c < last; ++c) {
        const int32_t x = row.tokens[c];
        ANVIL_CHECK(x >= 0 && x < V, "verify_tree: draft node ", c, " is token ", x, ", outside the vocabulary [0, ", V,
                    ")");
        const double qx = q ? q[x] : 1.0;
        ANVIL_CHECK(qx > 0, "verify_tree: draft node ", c, " (id ", x, ") has q = 0 at its parent — the drafter "
                    "must draw its tokens from the q it reports");
        if (uniforms[c - 1] * qx < r[x]) {  // probability min(1, r(x) / q(x))
          kept = c;
          break;
        }
        // Rejected: the next child is tested against the residual (kept as is in the rounding case).
        if (q) {
          if (residual_distribution(r.data(), q, V, next_r)) r.swap(next_r);
        } else {
          point_mass_residual(r, x);
        }
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
