// The sampler's selection rule (temperature, then top-k, then top-p, as Hugging
// Face's warpers) against a naive O(V^2) implementation on hand-built logits, its
// inverse-CDF draw, and an empirical frequency check of the Philox draws.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "eval/generate.h"
#include "tests/support/reference.h"

using namespace anvil;

namespace {

const float kInf = std::numeric_limits<float>::infinity();

SamplingConfig cfg(double temperature, int64_t top_k = 0, double top_p = 1.0) {
  SamplingConfig c;
  c.temperature = temperature;
  c.top_k = top_k;
  c.top_p = top_p;
  return c;
}

// The rule written out directly: token i survives top-k iff fewer than k tokens
// have a strictly larger scaled logit; it survives top-p iff the probability of
// the tokens ranked ahead of it (larger probability, or equal and a lower id) is
// < top_p.
std::vector<double> naive_distribution(const std::vector<float>& logits, const SamplingConfig& c) {
  const size_t V = logits.size();
  std::vector<double> p(V, 0.0);
  if (c.temperature == 0) {
    size_t best = 0;
    for (size_t i = 0; i < V; ++i)
      if (logits[i] > logits[best]) best = i;
    p[best] = 1;
    return p;
  }
  std::vector<double> z(V);
  for (size_t i = 0; i < V; ++i) z[i] = logits[i] / c.temperature;
  std::vector<bool> keep(V);
  for (size_t i = 0; i < V; ++i) {
    size_t larger = 0;
    for (size_t j = 0; j < V; ++j) larger += z[j] > z[i];
    keep[i] = z[i] > -kInf && (c.top_k == 0 || static_cast<int64_t>(larger) < c.top_k);
  }
  double zmax = -kInf, total = 0;
  for (size_t i = 0; i < V; ++i)
    if (keep[i]) zmax = std::max(zmax, z[i]);
  for (size_t i = 0; i < V; ++i)
    if (keep[i]) total += std::exp(z[i] - zmax);
  for (size_t i = 0; i < V; ++i) p[i] = keep[i] ? std::exp(z[i] - zmax) / total : 0.0;
  if (c.top_p < 1) {
    std::vector<double> q(V, 0.0);
    for (size_t i = 0; i < V; ++i) {
      if (p[i] == 0) continue;
      double ahead = 0;
      for (size_t j = 0; j < V; ++j)
        if (p[j] > p[i] || (p[j] == p[i] && j < i)) ahead += p[j];
      if (ahead < c.top_p) q[i] = p[i];
    }
    double s = 0;
    for (double x : q) s += x;
    for (double& x : q) x /= s;
    p = q;
  }
  return p;
}

std::vector<int> support(const std::vector<double>& p) {
  std::vector<int> s;
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i] > 0) s.push_back(static_cast<int>(i));
  return s;
}

// Checks the sampler against the naive rule and returns the kept ids.
std::vector<int> check_rule(const std::vector<float>& logits, const SamplingConfig& c, const std::string& what) {
  const auto got = sampling_distribution(logits.data(), static_cast<int64_t>(logits.size()), c);
  const auto want = naive_distribution(logits, c);
  EXPECT_EQ(support(got), support(want)) << what;
  double sum = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-12) << what << " token " << i;
    sum += got[i];
  }
  EXPECT_NEAR(sum, 1.0, 1e-12) << what;
  return support(got);
}

using Ids = std::vector<int>;

}  // namespace

TEST(Sampling, TopKKeepsTheLargestAndEveryTieAtTheBoundary) {
  const std::vector<float> x{1, 3, 2, 3, -1, 0};
  EXPECT_EQ(check_rule(x, cfg(1, 1), "k=1, tied maxima"), (Ids{1, 3}));
  EXPECT_EQ(check_rule(x, cfg(1, 2), "k=2"), (Ids{1, 3}));
  EXPECT_EQ(check_rule(x, cfg(1, 3), "k=3"), (Ids{1, 2, 3}));
  EXPECT_EQ(check_rule(x, cfg(1, 6), "k=V"), (Ids{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(check_rule(x, cfg(1, 100), "k>V"), (Ids{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(check_rule({5, 4, 4, 4, 1}, cfg(1, 2), "ties at the k-th"), (Ids{0, 1, 2, 3}));
  EXPECT_EQ(check_rule({-kInf, 0, -kInf, 1}, cfg(1, 3), "-inf never kept"), (Ids{1, 3}));
}

TEST(Sampling, NucleusIsTheShortestPrefixReachingTopP) {
  const std::vector<float> uniform{0, 0, 0, 0};
  EXPECT_EQ(check_rule(uniform, cfg(1, 0, 0.5), "mass exactly p"), (Ids{0, 1}));
  EXPECT_EQ(check_rule(uniform, cfg(1, 0, 0.5000001), "just above"), (Ids{0, 1, 2}));
  EXPECT_EQ(check_rule(uniform, cfg(1, 0, 0.4999999), "just below"), (Ids{0, 1}));
  EXPECT_EQ(check_rule(uniform, cfg(1, 0, 1e-9), "tiny p keeps one"), (Ids{0}));
  // probabilities ~ (0.09, 0.665, 0.245): ordered 1, 2, 0.
  const std::vector<float> x{0, 2, 1};
  EXPECT_EQ(check_rule(x, cfg(1, 0, 0.6), "first alone reaches"), (Ids{1}));
  EXPECT_EQ(check_rule(x, cfg(1, 0, 0.7), "needs the second"), (Ids{1, 2}));
  EXPECT_EQ(check_rule(x, cfg(1, 0, 0.95), "needs all"), (Ids{0, 1, 2}));
  // Tie between the 2nd and 3rd most likely (0.757, 0.103, 0.103, 0.038): the lower id comes first.
  EXPECT_EQ(check_rule({1, 3, 1, 0}, cfg(1, 0, 0.8), "ties by id"), (Ids{0, 1}));
  // top-p applies to the softmax over what top-k left.
  EXPECT_EQ(check_rule({0, 2, 1, 1.5f}, cfg(1, 2, 0.6), "top-k then top-p"), (Ids{1}));
  EXPECT_EQ(check_rule({0, 2, 1, 1.5f}, cfg(1, 2, 0.7), "top-k then top-p (2)"), (Ids{1, 3}));
}

TEST(Sampling, TemperatureComesFirstAsInHuggingFace) {
  const std::vector<float> x{2, 1, 0};
  // At T = 1 the top two hold 0.91 of the mass; at T = 10 they hold 0.70, so
  // p = 0.8 needs all three: temperature is applied before the nucleus is cut.
  EXPECT_EQ(check_rule(x, cfg(1, 0, 0.8), "T=1"), (Ids{0, 1}));
  EXPECT_EQ(check_rule(x, cfg(10, 0, 0.8), "T=10"), (Ids{0, 1, 2}));
  const auto p = sampling_distribution(x.data(), 3, cfg(0.5));
  const double z = std::exp(4.0) + std::exp(2.0) + 1.0;
  EXPECT_NEAR(p[0], std::exp(4.0) / z, 1e-12);
  EXPECT_NEAR(p[2], 1.0 / z, 1e-12);
  EXPECT_EQ(check_rule({1, 4, 4, 2}, cfg(0), "greedy: first of tied maxima"), (Ids{1}));
  EXPECT_EQ(check_rule({1, 4, 4, 2}, cfg(0, 1, 0.1), "greedy ignores k and p"), (Ids{1}));
}

TEST(Sampling, RandomLogitsMatchTheNaiveRule) {
  const Tensor t = anvil::testing::random_tensor({64}, 77, -3.0f, 3.0f);
  std::vector<float> x = t.to_vector();
  x[5] = x[9];  // a tie
  x[11] = -kInf;
  for (double temp : {0.3, 1.0, 2.5})
    for (int64_t k : {0, 1, 7, 40})
      for (double p : {1.0, 0.95, 0.5, 0.1})
        check_rule(x, cfg(temp, k, p), "T=" + std::to_string(temp) + " k=" + std::to_string(k) +
                                           " p=" + std::to_string(p));
}

TEST(Sampling, InverseCdfOverKeptTokensInIdOrder) {
  const std::vector<float> x{0, 0, 0, 0, -100};
  EXPECT_EQ(sample_token(x.data(), 5, cfg(1), 0.0), 0);
  EXPECT_EQ(sample_token(x.data(), 5, cfg(1), 0.24), 0);
  EXPECT_EQ(sample_token(x.data(), 5, cfg(1), 0.26), 1);
  EXPECT_EQ(sample_token(x.data(), 5, cfg(1), 0.74), 2);
  EXPECT_EQ(sample_token(x.data(), 5, cfg(1), 0.999999), 3);
  EXPECT_EQ(sample_token(x.data(), 5, cfg(1, 0, 0.5), 0.75), 1);  // nucleus {0, 1}
  // Excluded tokens are never drawn, whatever u.
  const std::vector<float> y{0.5f, 2, -1, 1.5f, 1.8f};
  for (int i = 0; i < 1000; ++i) {
    const int32_t tok = sample_token(y.data(), 5, cfg(1, 2), i / 1000.0);
    EXPECT_TRUE(tok == 1 || tok == 4) << tok;
  }
}

TEST(Sampling, EmpiricalFrequenciesWithinThreeSigma) {
  const std::vector<double> p{0.1, 0.2, 0.3, 0.15, 0.25};
  std::vector<float> logits;
  for (double q : p) logits.push_back(static_cast<float>(std::log(q)));
  const int n = 20000;
  for (int64_t k : {0, 3}) {
    const SamplingConfig c = cfg(1, k);
    const auto want = sampling_distribution(logits.data(), 5, c);
    std::vector<int> count(5, 0);
    for (int i = 0; i < n; ++i) ++count[sample_token(logits.data(), 5, c, sampling_uniform(42, 0, i))];
    for (int j = 0; j < 5; ++j) {
      const double sigma = std::sqrt(want[j] * (1 - want[j]) / n);
      EXPECT_LE(std::fabs(count[j] / double(n) - want[j]), 3 * sigma + 1e-12)
          << "k=" << k << " token " << j << ": " << count[j] << " of " << n << ", expected p " << want[j];
    }
    if (k == 3) EXPECT_EQ(count[0] + count[3], 0) << "top-3 drew an excluded token";
  }
}

TEST(Sampling, UniformsAreInRangeAndKeyedBySeedSequenceStep) {
  double lo = 1, hi = 0;
  for (uint32_t s = 0; s < 2000; ++s) {
    const double u = sampling_uniform(1, 0, s);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    ASSERT_TRUE(u >= 0 && u < 1) << u;
  }
  EXPECT_LT(lo, 0.01);
  EXPECT_GT(hi, 0.99);
  EXPECT_EQ(sampling_uniform(1, 2, 3), sampling_uniform(1, 2, 3));
  EXPECT_NE(sampling_uniform(1, 2, 3), sampling_uniform(2, 2, 3));
  EXPECT_NE(sampling_uniform(1, 2, 3), sampling_uniform(1, 3, 3));
  EXPECT_NE(sampling_uniform(1, 2, 3), sampling_uniform(1, 2, 4));
}

TEST(Sampling, BadConfigsAndLogitsAreErrors) {
  const std::vector<float> x{0, 1};
  EXPECT_THROW(sampling_distribution(x.data(), 2, cfg(-1)), Error);
  EXPECT_THROW(sampling_distribution(x.data(), 2, cfg(std::nan(""))), Error);
  EXPECT_THROW(sampling_distribution(x.data(), 2, cfg(1, -1)), Error);
  EXPECT_THROW(sampling_distribution(x.data(), 2, cfg(1, 0, 0)), Error);
  EXPECT_THROW(sampling_distribution(x.data(), 2, cfg(1, 0, 1.5)), Error);
  const std::vector<float> bad{0, std::nanf("")};
  EXPECT_THROW(sampling_distribution(bad.data(), 2, cfg(1)), Error);
  const std::vector<float> none{-kInf, -kInf};
  EXPECT_THROW(sampling_distribution(none.data(), 2, cfg(1)), Error);
  EXPECT_THROW(sample_token(x.data(), 2, cfg(1), 1.0), Error);
}
