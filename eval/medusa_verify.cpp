// Medusa's typical acceptance on a candidate tree (see the header).
#include "eval/medusa_verify.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "eval/speculative.h"

namespace anvil {

double typical_threshold(const double* p, int64_t vocab, double epsilon, double delta) {
  double entropy = 0;
  for (int64_t i = 0; i < vocab; ++i) entropy -= p[i] * std::log(p[i] + 1e-5);
  return std::min(epsilon, delta * std::exp(-entropy));
}

TreeVerdict verify_tree_typical(const TreeRow& row, double epsilon, double delta, double uniform) {
  ANVIL_CHECK(row.tree && row.vocab >= 1 && row.tokens && row.p, "verify_tree_typical: needs a tree, tokens, the "
              "target's distributions and a vocabulary of >= 1 token");
  ANVIL_CHECK(epsilon > 0 && delta > 0, "verify_tree_typical: posterior threshold ε = ", epsilon, " and alpha δ = ",
              delta, " must be > 0 (Medusa's defaults: ε = 0.09, δ = 0.3)");
  const DraftTree& tree = *row.tree;
  const int64_t V = row.vocab, S = tree.size();
  std::vector<double> threshold(static_cast<size_t>(S), -1.0);  // of the inner nodes; -1: not computed
  std::vector<double> score(static_cast<size_t>(S), 0.0);       // Σ log p_parent along the path
  std::vector<uint8_t> ok(static_cast<size_t>(S), 0);           // the whole chain up to the node is acceptable
  ok[0] = 1;
  int32_t best = 0;
  for (int32_t c = 1; c < S; ++c) {  // breadth first: a parent precedes its children
    const int32_t up = tree.parent[c], x = row.tokens[c];
    if (!ok[up]) continue;
    ANVIL_CHECK(x >= 0 && x < V, "verify_tree_typical: node ", c, " is token ", x, ", outside the vocabulary [0, ", V,
                ")");
    const double* p = row.p + up * V;
    if (threshold[up] < 0) threshold[up] = typical_threshold(p, V, epsilon, delta);
    if (!(p[x] > threshold[up])) continue;
    ok[c] = 1;
    score[c] = score[up] + std::log(p[x]);
    if (tree.level[c] > tree.level[best] || (tree.level[c] == tree.level[best] && score[c] > score[best])) best = c;
  }
  TreeVerdict v;
  for (int32_t i = best; i > 0; i = tree.parent[i]) v.path.insert(v.path.begin(), i);
  const double* p = row.p + best * V;
  const double t = typical_threshold(p, V, epsilon, delta);
  std::vector<double> kept(p, p + V);
  double mass = 0;
  for (double& k : kept) mass += (k = k >= t ? k : 0.0);
  if (!(mass > 0)) {
    v.next = argmax_token(p, V);
    return v;
  }
  for (double& k : kept) k /= mass;
  v.next = draw_token(kept.data(), V, uniform);
  return v;
}

}  // namespace anvil
