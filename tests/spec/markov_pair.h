// A first-order Markov "target" and "drafter" over a small vocabulary for the Monte-Carlo
// checks of the speculative samplers (chain and tree): exact distributions at every depth, so the
// law of the committed tokens is known in closed form.
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "eval/generate.h"

namespace anvil::testing {

// A first-order Markov "target" and "drafter" over V tokens: the distribution at depth d (tokens
// after the context) given the previous token, from random logits processed by `config`. The
// drafter's logits are the target's plus noise, so acceptance is partial and differs by token.
struct MarkovPair {
  int64_t V = 0;
  std::vector<double> p, q;  // [depth, previous token, V]
  const double* P(int64_t d, int32_t prev) const { return p.data() + (d * V + prev) * V; }
  const double* Q(int64_t d, int32_t prev) const { return q.data() + (d * V + prev) * V; }
};

inline MarkovPair make_markov(int64_t V, int64_t depths, const SamplingConfig& config, uint32_t stream) {
  MarkovPair m;
  m.V = V;
  const PhiloxStream rng(5, stream);
  std::vector<float> zp(V), zq(V);
  for (int64_t row = 0; row < depths * V; ++row) {
    for (int64_t i = 0; i < V; ++i) {
      zp[i] = 2.0f * rng.normal(static_cast<uint64_t>(2 * (row * V + i)));
      zq[i] = zp[i] + 1.5f * rng.normal(static_cast<uint64_t>(2 * (row * V + i) + 1));
    }
    const auto p = sampling_distribution(zp.data(), V, config), q = sampling_distribution(zq.data(), V, config);
    m.p.insert(m.p.end(), p.begin(), p.end());
    m.q.insert(m.q.end(), q.begin(), q.end());
  }
  return m;
}

}  // namespace anvil::testing
