// Acceptance rules on Medusa's candidate trees (eval/medusa_verify.h, eval/speculative_tree.h):
// the typical threshold against ALGORITHMS.md §6's vectors; greedy and the lossless point-mass
// sampler by hand; Monte-Carlo checks (chi-square and TV, false alarm ~1e-6) that the lossless
// sampler's first two committed tokens follow the target on an irregular tree, also with a
// repeated sibling, and that a sampler without the sibling residual fails them; typical
// acceptance against brute force over every retrieve path of random trees.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>

#include "eval/medusa_tree.h"
#include "eval/medusa_verify.h"
#include "eval/speculative.h"
#include "tests/spec/markov_pair.h"
#include "tests/spec/spec_stats.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

TEST(MedusaVerify, TypicalThresholdVectors) {
  // Uniform over 4: exp(−H) = 0.25 + 1e-5 exactly (every log is log(0.25 + 1e-5)).
  const double uniform[] = {0.25, 0.25, 0.25, 0.25};
  EXPECT_NEAR(typical_threshold(uniform, 4, 0.09, 0.3), 0.075, 0.3 * 1e-5 + 1e-15);
  // [0.7, 0.2, 0.05, 0.05]: H ≈ 0.8711; the 1e-5 term moves H by at most Σ p · 1e-5 / p = 4e-5.
  const double peaked[] = {0.7, 0.2, 0.05, 0.05};
  const double h = -std::log(typical_threshold(peaked, 4, 1.0, 1.0));
  EXPECT_NEAR(h, 0.8711, 4e-5 + 5e-5);  // + the rounding of the quoted 0.8711
  EXPECT_EQ(typical_threshold(peaked, 4, 0.09, 0.3), 0.09);  // 0.3 · e^−0.8711 ≈ 0.126 > ε
}

// [(0,), (1,), (0, 0)]: node 1 = head 1 rank 0, node 2 = head 1 rank 1, node 3 = node 1's child.
struct SmallTree {
  MedusaTree t = load_medusa_tree("[(0,), (1,), (0, 0)]", 2, "test");
  const int32_t tokens[4] = {-1, 1, 0, 2};
  const double p[12] = {0.5, 0.3, 0.2, /*after node 1*/ 0.1, 0.1, 0.8, /*after 2*/ 0.2, 0.7, 0.1, /*after 3*/ 0, 1, 0};
  TreeRow row() const { return TreeRow{&t.tree, 3, tokens, nullptr, p}; }
};

TEST(MedusaVerify, GreedyOnAMedusaTree) {
  const SmallTree s;
  const TreeVerdict v = verify_tree(s.row(), nullptr, true);  // root argmax 0 = node 2; its argmax 1
  EXPECT_EQ(v.path, (std::vector<int32_t>{2}));
  EXPECT_EQ(v.next, 1);
  SmallTree deep;
  const double p1[12] = {0.2, 0.5, 0.3, 0.1, 0.1, 0.8, 0.2, 0.7, 0.1, 0, 0, 1};
  const TreeVerdict w = verify_tree(TreeRow{&deep.t.tree, 3, deep.tokens, nullptr, p1}, nullptr, true);
  EXPECT_EQ(w.path, (std::vector<int32_t>{1, 3}));  // 1 = argmax at the root, 2 = argmax after it
  EXPECT_EQ(w.next, 2);                             // the bonus: argmax after node 3
}

TEST(MedusaVerify, PointMassCandidatesByHand) {
  const SmallTree s;
  // Node 1 (token 1) accepted iff u0 < r(1) = 0.3; then node 3 (token 2) iff u2 < p_1(2) = 0.8.
  double u[4] = {0.29, 0.99, 0.79, 0.5};
  TreeVerdict v = verify_tree(s.row(), u, false);
  EXPECT_EQ(v.path, (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(v.next, 1);  // the bonus from p after node 3 = δ_1
  // Node 1 rejected: r = [5/7, 0, 2/7]; node 2 (token 0) accepted iff u1 < 5/7.
  const double u2[4] = {0.31, 0.71, 0.0, 0.5};
  v = verify_tree(s.row(), u2, false);
  EXPECT_EQ(v.path, (std::vector<int32_t>{2}));
  EXPECT_EQ(v.next, 1);  // p after node 2 at u = 0.5: 0.2 + 0.7 covers it → token 1
  // Both rejected: r = [0, 0, 1], the final draw is token 2 whatever u3.
  const double u3[4] = {0.31, 0.72, 0.0, 0.01};
  v = verify_tree(s.row(), u3, false);
  EXPECT_TRUE(v.path.empty());
  EXPECT_EQ(v.next, 2);
  // A repeated sibling: after the first rejection r(x) = 0, so the copy is rejected surely.
  const int32_t repeated[4] = {-1, 1, 1, 2};
  const double u4[4] = {0.31, 0.0, 0.0, 0.0};
  v = verify_tree(TreeRow{&s.t.tree, 3, repeated, nullptr, s.p}, u4, false);
  EXPECT_TRUE(v.path.empty());
  EXPECT_EQ(v.next, 0);  // r = [5/7, 0, 2/7] at u = 0
}

// ---- lossless: Monte-Carlo against the target ----

using Verifier = std::function<TreeVerdict(const TreeRow&, const double*)>;

// The wrong sampler the checks must catch: every sibling tested against p (no residual).
TreeVerdict without_sibling_residual(const TreeRow& row, const double* u) {
  const DraftTree& t = *row.tree;
  const int64_t V = row.vocab;
  TreeVerdict v;
  int32_t node = 0;
  while (!t.leaf(node)) {
    const double* p = row.p + node * V;
    int32_t kept = -1;
    for (int32_t c = t.first_child[node]; c < t.first_child[node] + t.children[node] && kept < 0; ++c)
      if (u[c - 1] < p[row.tokens[c]]) kept = c;
    if (kept < 0) {
      std::vector<double> r(p, p + V);
      for (int32_t c = t.first_child[node]; c < t.first_child[node] + t.children[node]; ++c) r[row.tokens[c]] = 0;
      const double mass = std::accumulate(r.begin(), r.end(), 0.0);
      for (double& x : r) x /= mass;
      v.next = draw_token(r.data(), V, u[t.nodes()]);
      return v;
    }
    v.path.push_back(kept);
    node = kept;
  }
  v.next = draw_token(row.p + node * V, V, u[t.nodes()]);
  return v;
}

// Decodes after context token 3 until two tokens are committed, `draws` times. Head h's top-k at
// committed depth d after token `prev` is the top-k of the drafter's Q(d + h, prev): fixed before
// verification, not conditioned on the path (as Medusa's heads). `repeat`: rank 1 copies rank 0.
void decode_pairs(const MarkovPair& m, const MedusaTree& t, int64_t draws, const Verifier& verify, bool repeat,
                  std::vector<int64_t>& first, std::vector<int64_t>& pairs) {
  const int64_t V = m.V, S = t.size();
  const int k = t.max_rank();
  first.assign(V, 0);
  pairs.assign(V * V, 0);
  std::vector<double> u(S), p(S * V);
  std::vector<int32_t> topk(static_cast<size_t>(t.depth() * k)), ids(V);
  for (int64_t n = 0; n < draws; ++n) {
    std::vector<int32_t> out;
    for (uint32_t round = 0; out.size() < 2; ++round) {
      const int64_t d = static_cast<int64_t>(out.size());
      const int32_t prev = out.empty() ? 3 : out.back();
      for (int h = 0; h < t.depth(); ++h) {
        const double* q = m.Q(d + h, prev);
        std::iota(ids.begin(), ids.end(), 0);
        std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) { return q[a] > q[b]; });
        std::copy(ids.begin(), ids.begin() + k, topk.begin() + h * k);
        if (repeat) topk[h * k + 1] = topk[h * k];
      }
      const std::vector<int32_t> tokens = medusa_candidates(t, prev, topk.data(), k);
      for (int64_t c = 0; c < S; ++c) {
        const double* at = m.P(d + t.tree.level[c], tokens[c]);
        std::copy(at, at + V, p.begin() + c * V);
      }
      for (int64_t i = 0; i < S; ++i)
        u[i] = speculative_uniform(11, kVerifyStream, uint32_t(n), round * 64 + uint32_t(i));
      const TreeVerdict v = verify(TreeRow{&t.tree, V, tokens.data(), nullptr, p.data()}, u.data());
      for (int32_t c : v.path) out.push_back(tokens[c]);
      out.push_back(v.next);
    }
    ++first[out[0]];
    ++pairs[out[0] * V + out[1]];
  }
}

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

const char* kIrregular = "[(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]";

TEST(MedusaVerify, PointMassCandidatesFollowTheTarget) {
  const int64_t V = 30, draws = 400000;
  const MedusaTree t = load_medusa_tree(kIrregular, 3, "test");
  SamplingConfig config;
  config.temperature = 0.9;
  const MarkovPair m = make_markov(V, t.depth() + 3, config, 91);
  const Verifier lossless = [](const TreeRow& r, const double* u) { return verify_tree(r, u, false); };
  for (bool repeat : {false, true}) {
    std::vector<int64_t> first, pairs;
    decode_pairs(m, t, draws, lossless, repeat, first, pairs);
    const std::string tag = repeat ? "repeated siblings" : "distinct siblings";
    EXPECT_TRUE(follows_target(m, first, pairs, draws, tag)) << tag;
  }
  // The candidates are accepted often enough that the siblings and the deeper levels matter.
  const double* p0 = m.P(0, 3);
  const double* q0 = m.Q(0, 3);
  const int32_t top = static_cast<int32_t>(std::max_element(q0, q0 + V) - q0);
  EXPECT_GT(p0[top], 0.1);
  EXPECT_LT(p0[top], 0.9);
}

TEST(MedusaVerify, SkippingTheSiblingResidualFailsTheSameChecks) {
  const int64_t V = 30, draws = 100000;
  const MedusaTree t = load_medusa_tree(kIrregular, 3, "test");
  SamplingConfig config;
  config.temperature = 0.9;
  const MarkovPair m = make_markov(V, t.depth() + 3, config, 91);
  std::vector<int64_t> first, pairs;
  decode_pairs(m, t, draws, without_sibling_residual, false, first, pairs);
  EXPECT_FALSE(follows_target(m, first, pairs, draws, "without the sibling residual"))
      << "a point-mass sampler without the residual update went undetected";
}

// ---- typical acceptance against brute force ----

struct Typical {
  std::vector<int32_t> path;
  int32_t next;
};

// Every retrieve row: the accepted prefix (cumulative product of p_parent(x) > threshold), the
// longest wins, then the largest Σ log p, then the lowest node; the next token by inverse CDF over
// {p >= threshold} at its end.
Typical typical_by_brute_force(const MedusaTree& t, const int32_t* tokens, const double* p, int64_t V, double eps,
                               double delta, double u) {
  const auto threshold = [&](int32_t node) {
    double h = 0;
    for (int64_t i = 0; i < V; ++i) h += p[node * V + i] * std::log(p[node * V + i] + 1e-5);
    return std::min(eps, delta * std::exp(h));
  };
  std::vector<int32_t> best = {0};
  double best_score = 0;
  for (const std::vector<int32_t>& row : t.retrieve) {
    std::vector<int32_t> prefix = {0};
    double score = 0;
    for (size_t d = 1; d < row.size(); ++d) {
      const double px = p[row[d - 1] * V + tokens[row[d]]];
      if (!(px > threshold(row[d - 1]))) break;
      prefix.push_back(row[d]);
      score += std::log(px);
    }
    const bool longer = prefix.size() > best.size(), same = prefix.size() == best.size();
    if (longer || (same && (score > best_score || (score == best_score && prefix.back() < best.back())))) {
      best = prefix;
      best_score = score;
    }
  }
  Typical r;
  r.path.assign(best.begin() + 1, best.end());
  const int32_t end = best.back();
  const double th = threshold(end);
  double mass = 0;
  for (int64_t i = 0; i < V; ++i) mass += p[end * V + i] >= th ? p[end * V + i] : 0;
  double cum = 0;
  r.next = -1;
  for (int64_t i = 0; i < V && r.next < 0; ++i) {
    if (!(p[end * V + i] >= th) || p[end * V + i] == 0) continue;
    cum += p[end * V + i] / mass;
    if (u < cum) r.next = static_cast<int32_t>(i);
  }
  if (r.next < 0)  // rounding at the top of the CDF: the last kept token
    for (int64_t i = V - 1; i >= 0 && r.next < 0; --i)
      if (p[end * V + i] >= th && p[end * V + i] > 0) r.next = static_cast<int32_t>(i);
  return r;
}

TEST(MedusaVerify, TypicalMatchesBruteForceOverRetrievePaths) {
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::normal_distribution<double> normal;
  const int64_t V = 12;
  int64_t deep = 0, none = 0, trials = 3000;
  for (int64_t trial = 0; trial < trials; ++trial) {
    std::vector<std::vector<double>> acc(3, std::vector<double>(4));
    for (auto& row : acc)
      for (double& a : row) a = unit(rng);
    const MedusaTree t = build_medusa_tree(acc, 1 + static_cast<int>(rng() % 20));
    const int64_t S = t.size();
    std::vector<double> p(S * V);
    std::vector<int32_t> tokens(S, 0);
    for (int64_t c = 0; c < S; ++c) {
      const double scale = 1.0 + 4.0 * unit(rng);
      double sum = 0;
      for (int64_t i = 0; i < V; ++i) sum += (p[c * V + i] = std::exp(scale * normal(rng)));
      for (int64_t i = 0; i < V; ++i) p[c * V + i] /= sum;
      if (c > 0) {  // mostly the parent's likely tokens, so that paths get accepted
        const double* pp = p.data() + t.tree.parent[c] * V;
        tokens[c] = unit(rng) < 0.7 ? static_cast<int32_t>(std::max_element(pp, pp + V) - pp)
                                    : static_cast<int32_t>(rng() % V);
      }
    }
    const double eps = trial % 3 == 0 ? 0.09 : 0.02 + 0.3 * unit(rng), delta = trial % 3 == 0 ? 0.3 : unit(rng);
    const double u = unit(rng);
    const TreeVerdict v = verify_tree_typical(TreeRow{&t.tree, V, tokens.data(), nullptr, p.data()}, eps, delta, u);
    const Typical ref = typical_by_brute_force(t, tokens.data(), p.data(), V, eps, delta, u);
    ASSERT_EQ(v.path, ref.path) << "trial " << trial;
    ASSERT_EQ(v.next, ref.next) << "trial " << trial;
    deep += v.path.size() >= 2;
    none += v.path.empty();
  }
  EXPECT_GT(deep, trials / 10);  // both outcomes are exercised
  EXPECT_GT(none, trials / 20);
  const SmallTree s;
  EXPECT_NE(error_of([&] { verify_tree_typical(s.row(), 0.0, 0.3, 0.5); }).find("must be > 0"), std::string::npos);
}

}  // namespace
