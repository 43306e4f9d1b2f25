// Goodness-of-fit helpers for the speculative-decoding tests: Pearson chi-square statistics
// (one sample against known probabilities, two samples against each other) and their critical
// values, so every threshold follows from the sample size and a stated false-alarm rate; and the
// check that two sets of sampled three-token continuations follow one distribution.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace anvil::testing {

// The chi-square quantile with `df` degrees of freedom whose upper tail equals a standard
// normal's beyond z: the Wilson–Hilferty approximation df (1 − 2/(9 df) + z sqrt(2/(9 df)))^3,
// within a few percent for df >= 3. z = 4.75: a false alarm once in a million.
inline double chi_square_critical(int64_t df, double z = 4.75) {
  const double d = static_cast<double>(std::max<int64_t>(df, 1));
  const double a = 2.0 / (9.0 * d);
  return d * std::pow(1 - a + z * std::sqrt(a), 3);
}

struct ChiSquare {
  double statistic = 0;
  int64_t df = 0;
  bool passes(double z = 4.75) const { return statistic <= chi_square_critical(df, z); }
};

// Counts (sum n) against probabilities p: cells with expected count < 5 are pooled into one.
inline ChiSquare chi_square_fit(const std::vector<int64_t>& counts, const std::vector<double>& p) {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  ChiSquare r;
  double pooled_obs = 0, pooled_exp = 0;
  int64_t cells = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = p[i] * n;
    if (e < 5) {
      pooled_obs += counts[i];
      pooled_exp += e;
      continue;
    }
    r.statistic += (counts[i] - e) * (counts[i] - e) / e;
    ++cells;
  }
  if (pooled_exp >= 5) {
    r.statistic += (pooled_obs - pooled_exp) * (pooled_obs - pooled_exp) / pooled_exp;
    ++cells;
  } else if (pooled_obs > 5 * std::max(pooled_exp, 1.0)) {
    r.statistic += 1e9;  // mass where p has (almost) none
  }
  r.df = cells - 1;
  return r;
}

// Homogeneity of two samples' counts (Pearson's two-sample chi-square); cells whose pooled
// count is < 10 are merged into one.
inline ChiSquare chi_square_two_sample(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  double na = 0, nb = 0;
  for (size_t i = 0; i < a.size(); ++i) na += a[i], nb += b[i];
  std::vector<std::pair<double, double>> cells;
  std::pair<double, double> rest{0, 0};
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] + b[i] < 10) {
      rest.first += a[i];
      rest.second += b[i];
    } else {
      cells.push_back({static_cast<double>(a[i]), static_cast<double>(b[i])});
    }
  }
  if (rest.first + rest.second > 0) cells.push_back(rest);
  ChiSquare r;
  for (const auto& [x, y] : cells) {
    const double pooled = (x + y) / (na + nb);
    const double ea = pooled * na, eb = pooled * nb;
    r.statistic += (x - ea) * (x - ea) / ea + (y - eb) * (y - eb) / eb;
  }
  r.df = static_cast<int64_t>(cells.size()) - 1;
  return r;
}

// Total variation between counts (normalised) and p.
inline double total_variation(const std::vector<int64_t>& counts, const std::vector<double>& p) {
  double n = 0, tv = 0;
  for (int64_t c : counts) n += c;
  for (size_t i = 0; i < counts.size(); ++i) tv += std::abs(counts[i] / n - p[i]);
  return tv / 2;
}

// A TV radius the empirical distribution of n draws over k cells exceeds with probability
// < delta (Weissman et al. 2003: P(||p̂ − p||_1 >= e) <= (2^k − 2) exp(−n e^2 / 2)).
inline double total_variation_bound(int64_t k, int64_t n, double delta = 1e-6) {
  const double l1 = std::sqrt(2.0 * (k * std::log(2.0) - std::log(delta)) / static_cast<double>(n));
  return l1 / 2;
}

// `rows` copies of the prompt {1, 5, 9}: independent sequences, one row each.
inline std::vector<std::vector<int32_t>> rows_of(int64_t rows) {
  return std::vector<std::vector<int32_t>>(static_cast<size_t>(rows), std::vector<int32_t>{1, 5, 9});
}

// Counts of token t at positions 0, 1, 2 and of the three-token prefix hashed into 61 cells.
inline std::vector<std::vector<int64_t>> histograms(const std::vector<std::vector<int32_t>>& samples, int64_t V) {
  std::vector<std::vector<int64_t>> h(4);
  for (int k = 0; k < 3; ++k) h[k].assign(V, 0);
  h[3].assign(61, 0);
  for (const auto& s : samples) {
    for (int k = 0; k < 3; ++k) ++h[k][s[k]];
    ++h[3][(s[0] * V * V + s[1] * V + s[2]) % 61];
  }
  return h;
}

// Whether two sets of samples pass every two-sample chi-square (false alarm ~1e-6 each); the
// statistics go to `report`.
inline bool same_distribution(const std::vector<std::vector<int32_t>>& a, const std::vector<std::vector<int32_t>>& b,
                              int64_t V, std::string& report) {
  const auto ha = histograms(a, V), hb = histograms(b, V);
  bool all = true;
  const char* names[] = {"token 1", "token 2", "token 3", "tokens 1-3 (hashed)"};
  for (int k = 0; k < 4; ++k) {
    const ChiSquare c = chi_square_two_sample(ha[k], hb[k]);
    report += std::string(names[k]) + ": chi2 " + std::to_string(c.statistic) + " df " + std::to_string(c.df) +
              " (critical " + std::to_string(chi_square_critical(c.df)) + ")\n";
    all = all && c.passes();
  }
  return all;
}

}  // namespace anvil::testing
