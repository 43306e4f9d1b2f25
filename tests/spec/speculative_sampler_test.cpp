// The chain rejection sampler (verify_chain) on its own: the ALGORITHMS.md §7 vectors, and
// Monte-Carlo checks that the committed tokens follow the target's distribution exactly for
// multi-position chains on a 50-token vocabulary with temperature / top-k / top-p processing.
// A sampler that skips the residual fails the same checks (shown below), so they can fail.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>

#include "core/rng.h"
#include "eval/speculative.h"
#include "tests/spec/markov_pair.h"
#include "tests/spec/spec_stats.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

TEST(SpeculativeMath, ExpectedTokensPerCall) {
  EXPECT_NEAR(expected_tokens_per_call(0.8, 4), 3.3616, 1e-12);
  EXPECT_NEAR(expected_tokens_per_call(0.9, 3), 3.439, 1e-12);
  EXPECT_EQ(expected_tokens_per_call(1.0, 4), 5.0);
  EXPECT_EQ(expected_tokens_per_call(0.0, 4), 1.0);
  // Speedup = E[N] / (γc + 1).
  EXPECT_NEAR(expected_speedup(0.8, 4, 0.25), 3.3616 / 2.0, 1e-12);
  EXPECT_NE(error_of([] { expected_tokens_per_call(1.5, 2); }).find("alpha"), std::string::npos);
}

TEST(SpeculativeMath, AcceptanceProbabilityAtTemperature) {
  // ALGORITHMS.md §7: z_p = [2, 1, 0], z_q = [1.5, 1.2, 0] gives α_T = 0.7587, 0.8439, 0.9221.
  const float zp[] = {2, 1, 0}, zq[] = {1.5f, 1.2f, 0};
  const double temperatures[] = {0.5, 1.0, 2.0}, want[] = {0.7587, 0.8439, 0.9221};
  for (int i = 0; i < 3; ++i) {
    SamplingConfig c;
    c.temperature = temperatures[i];
    const auto p = sampling_distribution(zp, 3, c), q = sampling_distribution(zq, 3, c);
    EXPECT_NEAR(acceptance_probability(p.data(), q.data(), 3), want[i], 5e-5) << "T = " << temperatures[i];
  }
}

TEST(VerifyChain, ResidualAndBonusByHand) {
  const double q[] = {0.2, 0.5, 0.3};
  const double p[] = {0.5, 0.3, 0.2, /*bonus row*/ 0, 0, 1};
  const int32_t draft[] = {1};
  ChainRow row{1, 3, draft, q, p};
  // Token 1: accept iff u < p/q = 0.6.
  const double accept[] = {0.59, 0.99}, reject[] = {0.61, 0.99};
  EXPECT_EQ(verify_chain(row, accept, false).accepted, 1);
  EXPECT_EQ(verify_chain(row, accept, false).next, 2);  // the bonus row is one-hot on 2
  // Rejected: the residual max(0, p − q) = [0.3, 0, 0] → token 0 whatever the uniform.
  EXPECT_EQ(verify_chain(row, reject, false).accepted, 0);
  EXPECT_EQ(verify_chain(row, reject, false).next, 0);
  // Greedy: accept iff the draft is the target's argmax (token 0 here), next = the argmax.
  const ChainVerdict g = verify_chain(row, accept, true);
  EXPECT_EQ(g.accepted, 0);
  EXPECT_EQ(g.next, 0);
  const int32_t best[] = {0};
  ChainRow hit{1, 3, best, q, p};
  EXPECT_EQ(verify_chain(hit, accept, true).accepted, 1);
  EXPECT_EQ(verify_chain(hit, accept, true).next, 2);
  // A draft with q = 0 cannot have been drawn from q.
  const double q0[] = {0, 0.5, 0.5};
  ChainRow bad{1, 3, best, q0, p};
  EXPECT_NE(error_of([&] { verify_chain(bad, accept, false); }).find("q = 0"), std::string::npos);
}

TEST(VerifyChain, ReproducesPOnTheAlgorithmsVector) {
  // p = [0.5, 0.3, 0.2], q = [0.2, 0.5, 0.3]: accept-or-resample gives p (1e6 draws, within 2e-3).
  const double p[] = {0.5, 0.3, 0.2, 1.0 / 3, 1.0 / 3, 1.0 / 3}, q[] = {0.2, 0.5, 0.3};
  const int64_t n = 1000000;
  std::vector<int64_t> counts(3, 0);
  for (int64_t t = 0; t < n; ++t) {
    const int32_t draft[] = {draw_token(q, 3, speculative_uniform(11, kDraftStream, static_cast<uint32_t>(t), 0))};
    const double u[] = {speculative_uniform(11, kVerifyStream, static_cast<uint32_t>(t), 0),
                        speculative_uniform(11, kVerifyStream, static_cast<uint32_t>(t), 1)};
    const ChainVerdict v = verify_chain(ChainRow{1, 3, draft, q, p}, u, false);
    ++counts[v.accepted ? draft[0] : v.next];
  }
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(counts[i] / double(n), p[i], 2e-3) << "token " << i;
}

using Verifier = std::function<ChainVerdict(const ChainRow&, const double*, bool)>;

// The wrong sampler the tests must catch: on a rejection it draws from p, not the residual.
ChainVerdict verify_without_residual(const ChainRow& row, const double* u, bool) {
  for (int i = 0; i < row.gamma; ++i) {
    const int32_t x = row.draft[i];
    if (!(u[i] * row.q[i * row.vocab + x] < row.p[i * row.vocab + x]))
      return {i, draw_token(row.p + i * row.vocab, row.vocab, u[row.gamma])};
  }
  return {row.gamma, draw_token(row.p + row.gamma * row.vocab, row.vocab, u[row.gamma])};
}

// Decodes from context token `c0` with rounds of γ drafts until two tokens are committed, `draws`
// times; counts the first committed token and the (first, second) pair.
void decode_pairs(const MarkovPair& m, int gamma, int64_t draws, const Verifier& verify, std::vector<int64_t>& first,
                  std::vector<int64_t>& pairs) {
  const int64_t V = m.V;
  const int32_t c0 = 3;
  first.assign(V, 0);
  pairs.assign(V * V, 0);
  std::vector<int32_t> draft(gamma);
  std::vector<double> p((gamma + 1) * V), q(gamma * V), u(gamma + 1);
  for (int64_t t = 0; t < draws; ++t) {
    std::vector<int32_t> out;
    for (uint32_t round = 0; out.size() < 2; ++round) {
      const int64_t d = static_cast<int64_t>(out.size());
      int32_t prev = out.empty() ? c0 : out.back();
      for (int i = 0; i <= gamma; ++i) {
        std::copy(m.P(d + i, prev), m.P(d + i, prev) + V, p.begin() + i * V);
        if (i == gamma) break;
        std::copy(m.Q(d + i, prev), m.Q(d + i, prev) + V, q.begin() + i * V);
        const uint32_t k = round * 16 + i;
        draft[i] = prev = draw_token(m.Q(d + i, prev), V, speculative_uniform(7, kDraftStream, uint32_t(t), k));
      }
      for (int i = 0; i <= gamma; ++i) u[i] = speculative_uniform(7, kVerifyStream, uint32_t(t), round * 16 + i);
      const ChainVerdict v = verify(ChainRow{gamma, V, draft.data(), q.data(), p.data()}, u.data(), false);
      for (int i = 0; i < v.accepted; ++i) out.push_back(draft[i]);
      out.push_back(v.next);
    }
    ++first[out[0]];
    ++pairs[out[0] * V + out[1]];
  }
}

struct ChainCase {
  const char* name;
  SamplingConfig config;
  int gamma;
};

std::vector<ChainCase> chain_cases() {
  SamplingConfig plain, filtered, nucleus;
  filtered.temperature = 0.7, filtered.top_k = 12, filtered.top_p = 0.95;
  nucleus.temperature = 1.4, nucleus.top_p = 0.8;
  return {{"T1", plain, 3}, {"T0.7_topk12_topp0.95", filtered, 4}, {"T1.4_topp0.8", nucleus, 2}};
}

void check_chain(const MarkovPair& m, const std::vector<int64_t>& first, const std::vector<int64_t>& pairs,
                 int64_t draws, const std::string& tag) {
  const int64_t V = m.V;
  const std::vector<double> p1(m.P(0, 3), m.P(0, 3) + V);
  std::vector<double> p12(V * V);
  for (int64_t a = 0; a < V; ++a)
    for (int64_t b = 0; b < V; ++b) p12[a * V + b] = p1[a] * m.P(1, static_cast<int32_t>(a))[b];
  const ChiSquare c1 = chi_square_fit(first, p1), c12 = chi_square_fit(pairs, p12);
  std::printf("%s: first token chi2 %.1f (df %ld, critical %.1f), TV %.5f (bound %.5f); pairs chi2 %.1f (df %ld, "
              "critical %.1f)\n", tag.c_str(), c1.statistic, long(c1.df), chi_square_critical(c1.df),
              total_variation(first, p1), total_variation_bound(V, draws), c12.statistic, long(c12.df),
              chi_square_critical(c12.df));
  EXPECT_TRUE(c1.passes()) << tag << ": first token chi2 " << c1.statistic << " df " << c1.df << " > "
                           << chi_square_critical(c1.df);
  EXPECT_TRUE(c12.passes()) << tag << ": (first, second) chi2 " << c12.statistic << " df " << c12.df << " > "
                            << chi_square_critical(c12.df);
  EXPECT_LE(total_variation(first, p1), total_variation_bound(V, draws)) << tag;
  EXPECT_LE(total_variation(pairs, p12), total_variation_bound(V * V, draws)) << tag;
}

TEST(VerifyChain, MultiPositionChainsFollowTheTarget) {
  const int64_t V = 50, draws = 1000000;
  for (const ChainCase& c : chain_cases()) {
    const MarkovPair m = make_markov(V, c.gamma + 2, c.config, 40 + c.gamma);
    std::vector<int64_t> first, pairs;
    decode_pairs(m, c.gamma, draws, verify_chain, first, pairs);
    check_chain(m, first, pairs, draws, c.name);
    // The drafts were neither all accepted nor all rejected, so both branches were exercised.
    const double alpha = acceptance_probability(m.P(0, 3), m.Q(0, 3), V);
    EXPECT_GT(alpha, 0.2) << c.name;
    EXPECT_LT(alpha, 0.95) << c.name;
  }
}

TEST(VerifyChain, SkippingTheResidualFailsTheSameChecks) {
  const int64_t V = 50, draws = 100000;
  const ChainCase c = chain_cases()[1];
  const MarkovPair m = make_markov(V, c.gamma + 2, c.config, 40 + c.gamma);
  std::vector<int64_t> first, pairs;
  decode_pairs(m, c.gamma, draws, verify_without_residual, first, pairs);
  const std::vector<double> p1(m.P(0, 3), m.P(0, 3) + V);
  const ChiSquare c1 = chi_square_fit(first, p1);
  std::printf("without the residual: first token chi2 %.1f (df %ld, critical %.1f)\n", c1.statistic, long(c1.df),
              chi_square_critical(c1.df));
  EXPECT_FALSE(c1.passes()) << "a sampler without the residual went undetected";
  EXPECT_GT(total_variation(first, p1), total_variation_bound(V, draws));
}

}  // namespace
