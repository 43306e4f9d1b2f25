// The tree rejection sampler (verify_tree) on its own: the tree's shape, hand-worked verdicts,
// width 1 equal to the chain sampler draw for draw, and Monte-Carlo checks (10^6 draws, 50-token
// vocabulary, temperature / top-k / top-p) that the committed tokens follow the target exactly.
// A sampler that does not update the residual after a rejected sibling fails the same checks.
#include <gtest/gtest.h>

#include <cstdio>
#include <functional>

#include "eval/speculative.h"
#include "eval/speculative_tree.h"
#include "tests/spec/markov_pair.h"
#include "tests/spec/spec_stats.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

TEST(DraftTree, CompleteTreeShape) {
  const DraftTree t = DraftTree::complete(2, 3);
  ASSERT_EQ(t.nodes(), 14);
  EXPECT_EQ(draft_tree_nodes(2, 3), 14);
  EXPECT_EQ(draft_tree_nodes(3, 2), 12);
  const std::vector<int32_t> parent = {-1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6};
  EXPECT_EQ(t.parent, parent);
  EXPECT_EQ(t.level[14], 3);
  EXPECT_EQ(t.first_child[2], 5);
  EXPECT_TRUE(t.leaf(7));
  const std::vector<uint8_t> m = t.ancestor_mask();
  // Node 13 (parent 6, grandparent 2): sees 0, 2, 6 and itself.
  for (int j = 0; j < 15; ++j) EXPECT_EQ(m[13 * 15 + j], j == 0 || j == 2 || j == 6 || j == 13) << j;
  EXPECT_NE(error_of([] { DraftTree::complete(0, 3); }).find("width and depth must be >= 1"), std::string::npos);
  EXPECT_NE(error_of([] { DraftTree::complete(8, 5); }).find("lower the width or the depth"), std::string::npos);
}

TEST(VerifyTree, SiblingsAgainstTheResidualByHand) {
  // Root p = [0.5, 0.3, 0.2], q = [0.2, 0.5, 0.3], two children, depth 1.
  const DraftTree t = DraftTree::complete(2, 1);
  const double q[] = {0.2, 0.5, 0.3, 0, 0, 0, 0, 0, 0};
  const double p[] = {0.5, 0.3, 0.2, /*after node 1*/ 0, 0, 1, /*after node 2*/ 0, 1, 0};
  const int32_t tokens[] = {-1, 1, 2};
  const TreeRow row{&t, 3, tokens, q, p};
  // Child 1 (token 1): accepted iff u < 0.3 / 0.5; then the bonus from p after node 1 (token 2).
  const double take_first[] = {0.59, 0.99, 0.5};
  TreeVerdict v = verify_tree(row, take_first, false);
  ASSERT_EQ(v.path.size(), 1u);
  EXPECT_EQ(v.path[0], 1);
  EXPECT_EQ(v.next, 2);
  // Rejected: the residual [1, 0, 0] makes token 2 (r = 0) a sure rejection, and the final draw 0.
  const double reject[] = {0.61, 0.0, 0.99};
  v = verify_tree(row, reject, false);
  EXPECT_TRUE(v.path.empty());
  EXPECT_EQ(v.next, 0);
  // Greedy: the root's argmax is 0, neither child matches.
  v = verify_tree(row, reject, true);
  EXPECT_TRUE(v.path.empty());
  EXPECT_EQ(v.next, 0);
  const int32_t second_best[] = {-1, 1, 0};
  v = verify_tree(TreeRow{&t, 3, second_best, q, p}, reject, true);
  ASSERT_EQ(v.path.size(), 1u);
  EXPECT_EQ(v.path[0], 2);
  EXPECT_EQ(v.next, 1);  // argmax of p after node 2
  const double q0[] = {0, 0.5, 0.5, 0, 0, 0, 0, 0, 0};
  const int32_t zero[] = {-1, 0, 1};
  EXPECT_NE(error_of([&] { verify_tree(TreeRow{&t, 3, zero, q0, p}, reject, false); }).find("q = 0"),
            std::string::npos);
}

// Draws a round of a width × depth tree on the Markov pair after `prev` at depth d, with
// per-node p and q, and the draft tokens from q with the draft stream.
struct TreeRound {
  std::vector<int32_t> tokens;
  std::vector<double> p, q;
};

TreeRound draw_round(const MarkovPair& m, const DraftTree& t, int64_t d, int32_t prev, uint64_t draw, uint32_t k0) {
  const int64_t V = m.V, S = t.size();
  TreeRound r;
  r.tokens.assign(S, prev);
  r.p.resize(S * V);
  r.q.resize(S * V);
  for (int64_t c = 0; c < S; ++c) {
    if (c > 0) {
      const double* qa = r.q.data() + t.parent[c] * V;
      r.tokens[c] = draw_token(qa, V, speculative_uniform(7, kDraftStream, uint32_t(draw), k0 + uint32_t(c - 1)));
    }
    const int64_t at = d + t.level[c];
    std::copy(m.P(at, r.tokens[c]), m.P(at, r.tokens[c]) + V, r.p.begin() + c * V);
    std::copy(m.Q(at, r.tokens[c]), m.Q(at, r.tokens[c]) + V, r.q.begin() + c * V);
  }
  return r;
}

using TreeVerifier = std::function<TreeVerdict(const TreeRow&, const double*, bool)>;

// The wrong sampler the tests must catch: every sibling is tested against p itself (no residual
// after a rejection) — lossless for one child, biased for several.
TreeVerdict verify_without_sibling_residual(const TreeRow& row, const double* u, bool) {
  const DraftTree& t = *row.tree;
  const int64_t V = row.vocab;
  TreeVerdict v;
  int32_t node = 0;
  while (!t.leaf(node)) {
    const double *p = row.p + node * V, *q = row.q + node * V;
    int32_t kept = -1;
    for (int32_t c = t.first_child[node]; c < t.first_child[node] + t.children[node] && kept < 0; ++c)
      if (u[c - 1] * q[row.tokens[c]] < p[row.tokens[c]]) kept = c;
    if (kept < 0) {
      std::vector<double> r;
      v.next = draw_token(residual_distribution(p, q, V, r) ? r.data() : p, V, u[t.nodes()]);
      return v;
    }
    v.path.push_back(kept);
    node = kept;
  }
  v.next = draw_token(row.p + node * V, V, u[t.nodes()]);
  return v;
}

// Decodes after context token 3 with tree rounds until two tokens are committed, `draws` times;
// counts the first token and the (first, second) pair.
void decode_pairs(const MarkovPair& m, const DraftTree& t, int64_t draws, const TreeVerifier& verify,
                  std::vector<int64_t>& first, std::vector<int64_t>& pairs) {
  const int64_t V = m.V, S = t.size();
  first.assign(V, 0);
  pairs.assign(V * V, 0);
  std::vector<double> u(S);
  for (int64_t n = 0; n < draws; ++n) {
    std::vector<int32_t> out;
    for (uint32_t round = 0; out.size() < 2; ++round) {
      const uint32_t k0 = round * 64;
      const TreeRound r = draw_round(m, t, static_cast<int64_t>(out.size()), out.empty() ? 3 : out.back(), n, k0);
      for (int64_t i = 0; i < S; ++i) u[i] = speculative_uniform(7, kVerifyStream, uint32_t(n), k0 + uint32_t(i));
      const TreeVerdict v = verify(TreeRow{&t, V, r.tokens.data(), r.q.data(), r.p.data()}, u.data(), false);
      for (int32_t c : v.path) out.push_back(r.tokens[c]);
      out.push_back(v.next);
    }
    ++first[out[0]];
    ++pairs[out[0] * V + out[1]];
  }
}

struct TreeCase {
  const char* name;
  SamplingConfig config;
  int width, depth;
};

std::vector<TreeCase> tree_cases() {
  SamplingConfig plain, filtered, nucleus;
  filtered.temperature = 0.7, filtered.top_k = 12, filtered.top_p = 0.95;
  nucleus.temperature = 1.4, nucleus.top_p = 0.8;
  return {{"T1_w3d2", plain, 3, 2}, {"T0.7_topk12_topp0.95_w2d3", filtered, 2, 3}, {"T1.4_topp0.8_w4d1", nucleus, 4, 1}};
}

// Returns whether both the first token and the pair pass chi-square and TV; prints the figures.
bool follows_target(const MarkovPair& m, const std::vector<int64_t>& first, const std::vector<int64_t>& pairs,
                    int64_t draws, const std::string& tag) {
  const int64_t V = m.V;
  const std::vector<double> p1(m.P(0, 3), m.P(0, 3) + V);
  std::vector<double> p12(V * V);
  for (int64_t a = 0; a < V; ++a)
    for (int64_t b = 0; b < V; ++b) p12[a * V + b] = p1[a] * m.P(1, static_cast<int32_t>(a))[b];
  const ChiSquare c1 = chi_square_fit(first, p1), c12 = chi_square_fit(pairs, p12);
  const double tv1 = total_variation(first, p1), tv12 = total_variation(pairs, p12);
  std::printf("%s: first token chi2 %.1f (df %ld, critical %.1f), TV %.5f (bound %.5f); pairs chi2 %.1f (df %ld, "
              "critical %.1f), TV %.5f (bound %.5f)\n", tag.c_str(), c1.statistic, long(c1.df),
              chi_square_critical(c1.df), tv1, total_variation_bound(V, draws), c12.statistic, long(c12.df),
              chi_square_critical(c12.df), tv12, total_variation_bound(V * V, draws));
  return c1.passes() && c12.passes() && tv1 <= total_variation_bound(V, draws) &&
         tv12 <= total_variation_bound(V * V, draws);
}

TEST(VerifyTree, TreesFollowTheTarget) {
  const int64_t V = 50, draws = 1000000;
  for (const TreeCase& c : tree_cases()) {
    const DraftTree t = DraftTree::complete(c.width, c.depth);
    const MarkovPair m = make_markov(V, c.depth + 3, c.config, 60 + c.width);
    std::vector<int64_t> first, pairs;
    decode_pairs(m, t, draws, verify_tree, first, pairs);
    EXPECT_TRUE(follows_target(m, first, pairs, draws, c.name)) << c.name;
    const double alpha = acceptance_probability(m.P(0, 3), m.Q(0, 3), V);
    EXPECT_GT(alpha, 0.2) << c.name;  // siblings are reached and both branches exercised
    EXPECT_LT(alpha, 0.95) << c.name;
  }
}

TEST(VerifyTree, SkippingTheSiblingResidualFailsTheSameChecks) {
  const int64_t V = 50, draws = 100000;
  const TreeCase c = tree_cases()[0];
  const DraftTree t = DraftTree::complete(c.width, c.depth);
  const MarkovPair m = make_markov(V, c.depth + 3, c.config, 60 + c.width);
  std::vector<int64_t> first, pairs;
  decode_pairs(m, t, draws, verify_without_sibling_residual, first, pairs);
  EXPECT_FALSE(follows_target(m, first, pairs, draws, "without the sibling residual"))
      << "a tree sampler without the residual update went undetected";
}

TEST(VerifyTree, WidthOneIsTheChainSampler) {
  // Same drafts, same uniforms: the same accepted count and next token, round for round.
  const int64_t V = 50;
  SamplingConfig config;
  config.temperature = 0.8, config.top_k = 20;
  for (int gamma : {1, 3, 5}) {
    const DraftTree t = DraftTree::complete(1, gamma);
    const MarkovPair m = make_markov(V, gamma + 2, config, 80 + gamma);
    int64_t differ = 0, accepted_some = 0;
    for (int64_t n = 0; n < 20000; ++n) {
      const TreeRound r = draw_round(m, t, 0, 3, n, 0);
      std::vector<double> u(t.size());
      for (int64_t i = 0; i < t.size(); ++i) u[i] = speculative_uniform(9, kVerifyStream, uint32_t(n), uint32_t(i));
      const TreeVerdict tv = verify_tree(TreeRow{&t, V, r.tokens.data(), r.q.data(), r.p.data()}, u.data(), false);
      // The chain's q_i / p_i are the tree's rows 0..γ−1 / 0..γ (node i − 1 is draft i's parent).
      const ChainVerdict cv =
          verify_chain(ChainRow{gamma, V, r.tokens.data() + 1, r.q.data(), r.p.data()}, u.data(), false);
      differ += static_cast<int>(tv.path.size()) != cv.accepted || tv.next != cv.next;
      accepted_some += cv.accepted > 0;
    }
    EXPECT_EQ(differ, 0) << "gamma " << gamma;
    EXPECT_GT(accepted_some, 1000) << "gamma " << gamma;
  }
}

}  // namespace
