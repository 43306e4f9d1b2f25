// Chain speculative decoding: the rejection sampler and the batched decoding loop (see the header).
#include "eval/speculative.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <numeric>
#include <sstream>

#include "core/rng.h"

namespace anvil {

namespace {

using Clock = DecodeClock;

}  // namespace

double speculative_uniform(uint64_t seed, uint32_t stream, uint32_t round, uint32_t index) {
  // Two uniforms per Philox block, 53 bits each (27 + 26 bits of two words), as sampling_uniform.
  const PhiloxBlock r = PhiloxStream(seed, stream, round).block(index / 2);
  const uint32_t w = 2 * (index % 2);
  const uint64_t hi = r[w] >> 5, lo = r[w + 1] >> 6;
  return static_cast<double>((hi << 26) | lo) * (1.0 / 9007199254740992.0);  // / 2^53
}

double expected_tokens_per_call(double alpha, int gamma) {
  ANVIL_CHECK(alpha >= 0 && alpha <= 1, "expected_tokens_per_call: alpha must lie in [0, 1], got ", alpha);
  ANVIL_CHECK(gamma >= 0, "expected_tokens_per_call: gamma must be >= 0, got ", gamma);
  if (alpha == 1) return gamma + 1.0;
  return (1 - std::pow(alpha, gamma + 1)) / (1 - alpha);
}

double expected_speedup(double alpha, int gamma, double c) {
  ANVIL_CHECK(c >= 0, "expected_speedup: the drafter cost c must be >= 0, got ", c);
  return expected_tokens_per_call(alpha, gamma) / (gamma * c + 1);
}

double acceptance_probability(const double* p, const double* q, int64_t vocab) {
  double alpha = 0;
  for (int64_t i = 0; i < vocab; ++i) alpha += std::min(p[i], q[i]);
  return alpha;
}

int32_t argmax_token(const double* dist, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (dist[i] > dist[best]) best = i;
  return static_cast<int32_t>(best);
}

bool residual_distribution(const double* p, const double* q, int64_t vocab, std::vector<double>& out) {
  out.resize(static_cast<size_t>(vocab));
  double mass = 0;
  for (int64_t t = 0; t < vocab; ++t) mass += out[t] = std::max(0.0, p[t] - q[t]);
  if (!(mass > 0)) return false;
  for (double& r : out) r /= mass;
  return true;
}

int32_t draw_token(const double* dist, int64_t vocab, double u) {
  ANVIL_CHECK(u >= 0 && u < 1, "draw_token: u must lie in [0, 1), got ", u);
  double cum = 0;
  int64_t last = -1;
  for (int64_t i = 0; i < vocab; ++i) {
    if (dist[i] <= 0) continue;
    cum += dist[i];
    last = i;
    if (u < cum) return static_cast<int32_t>(i);
  }
  ANVIL_CHECK(last >= 0, "draw_token: the distribution has no token of positive probability");
  return static_cast<int32_t>(last);  // rounding left the total just below u
}

ChainVerdict verify_chain(const ChainRow& row, const double* uniforms, bool greedy) {
  ANVIL_CHECK(row.gamma >= 1 && row.vocab >= 1, "verify_chain: gamma and vocab must be >= 1, got ", row.gamma, " and ",
              row.vocab);
  const int64_t V = row.vocab;
  ChainVerdict v;
  for (int i = 0; i < row.gamma; ++i) {
    const int32_t x = row.draft[i];
    ANVIL_CHECK(x >= 0 && x < V, "verify_chain: draft token ", i, " is ", x, ", outside the vocabulary [0, ", V, ")");
    const double* p = row.p + i * V;
    const double* q = row.q + i * V;
    if (greedy) {
      const int32_t best = argmax_token(p, V);
      if (x != best) return {i, best};
      ++v.accepted;
      continue;
    }
    ANVIL_CHECK(q[x] > 0, "verify_chain: draft token ", i, " (id ", x, ") has q = 0 — the drafter must draw its "
                "tokens from the q it reports");
    if (uniforms[i] * q[x] < p[x]) {  // probability min(1, p(x) / q(x))
      ++v.accepted;
      continue;
    }
    // Rejected: the residual norm(max(0, p − q)). Its mass is the rejection probability, so it is
    // positive whenever a rejection can happen; rounding (p == q up to the last bits) falls back to p.
    std::vector<double> residual;
    if (!residual_distribution(p, q, V, residual)) return {i, draw_token(p, V, uniforms[row.gamma])};
    return {i, draw_token(residual.data(), V, uniforms[row.gamma])};
  }
  const double* bonus = row.p + row.gamma * V;
  v.next = greedy ? argmax_token(bonus, V) : draw_token(bonus, V, uniforms[row.gamma]);
  return v;
}

// ---- Stats ----

double SpeculativeStats::tau() const {
  return target_row_forwards ? static_cast<double>(committed) / target_row_forwards : 0.0;
}

double SpeculativeStats::acceptance_rate() const {
  int64_t tested = 0, kept = 0;
  for (size_t i = 0; i < reached.size(); ++i) tested += reached[i], kept += accepted[i];
  return tested ? static_cast<double>(kept) / tested : 0.0;
}

double SpeculativeStats::acceptance_at(int i) const {
  const size_t k = static_cast<size_t>(i);
  return k < reached.size() && reached[k] ? static_cast<double>(accepted[k]) / reached[k] : 0.0;
}

void verification_inputs(const float* logits, int64_t b, int64_t positions, int64_t vocab, const SamplingConfig& cfg,
                         uint32_t sequence, uint32_t round, bool greedy, std::vector<double>& p,
                         std::vector<double>& uniforms) {
  p.resize(static_cast<size_t>(positions * vocab));
  for (int64_t i = 0; i < positions; ++i) {
    const std::vector<double> pi = sampling_distribution(logits + (b * positions + i) * vocab, vocab, cfg);
    std::copy(pi.begin(), pi.end(), p.begin() + i * vocab);
  }
  uniforms.resize(static_cast<size_t>(positions), 0.0);
  if (!greedy)
    for (int64_t i = 0; i < positions; ++i)
      uniforms[i] = speculative_uniform(cfg.seed, kVerifyStream + sequence, round, static_cast<uint32_t>(i));
}

double seconds_since(DecodeClock::time_point t0) {
  return std::chrono::duration<double>(DecodeClock::now() - t0).count();
}

std::map<size_t, std::vector<size_t>> prompts_by_length(const std::vector<std::vector<int32_t>>& prompts) {
  std::map<size_t, std::vector<size_t>> groups;
  for (size_t i = 0; i < prompts.size(); ++i) groups[prompts[i].size()].push_back(i);
  return groups;
}

int64_t commit_tokens(const std::vector<int32_t>& tokens, int max_new_tokens, std::optional<int32_t> stop_token,
                      std::vector<int32_t>& seq, std::vector<int32_t>& out) {
  int64_t appended = 0;
  for (const int32_t tok : tokens) {
    seq.push_back(tok);
    out.push_back(tok);
    ++appended;
    if ((stop_token && tok == *stop_token) || static_cast<int>(out.size()) == max_new_tokens) break;
  }
  return appended;
}

bool still_active(std::vector<bool>& active, const std::vector<std::vector<int32_t>>& out,
                  const std::vector<size_t>& which, int max_new_tokens, std::optional<int32_t> stop_token) {
  bool any = false;
  for (size_t b = 0; b < active.size(); ++b) {
    const std::vector<int32_t>& mine = out[which[b]];
    if (active[b])
      active[b] = static_cast<int>(mine.size()) < max_new_tokens && !(stop_token && mine.back() == *stop_token);
    any = any || active[b];
  }
  return any;
}

std::vector<int32_t> best_tokens(const float* z, int64_t vocab, int count) {
  std::vector<int32_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  const int64_t k = std::min<int64_t>(count, vocab);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                    [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
  ids.resize(static_cast<size_t>(k));
  ids.resize(static_cast<size_t>(count), ids.front());
  return ids;
}

double SpeculativeStats::target_forwards_per_token() const {
  return tokens ? static_cast<double>(target_row_forwards) / tokens : 0.0;
}

double SpeculativeStats::drafter_overhead() const {
  if (!drafter_calls || !target_calls || target_seconds <= 0) return 0.0;
  return (draft_seconds / drafter_calls) / (target_seconds / target_calls);
}

double SpeculativeStats::tokens_per_second() const { return total_seconds > 0 ? tokens / total_seconds : 0.0; }

std::string SpeculativeStats::summary() const {
  std::ostringstream s;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", tau());
  const bool medusa = tree_width == 0;  // the heads draft: no drafter forwards
  if (medusa)
    s << "medusa: tree of " << tree_nodes << " nodes, depth " << gamma;
  else if (tree_width > 1)
    s << "speculative: tree width " << tree_width << " depth " << gamma;
  else
    s << "speculative: gamma " << gamma;
  s << ", tau " << buf << (medusa ? " tokens per base forward (the next token included)"
                                  : " tokens per target forward (bonus token included)");
  s << (medusa ? ", acceptance per head" : tree_width > 1 ? ", acceptance by level" : ", acceptance by position");
  for (int i = 0; i < gamma; ++i) {
    std::snprintf(buf, sizeof buf, "%s%.3f", i ? "/" : " ", acceptance_at(i));
    s << buf;
  }
  std::snprintf(buf, sizeof buf, "%.3f", target_forwards_per_token());
  if (medusa) {
    s << ", base forwards/token " << buf;
  } else {
    s << ", target forwards/token " << buf << ", drafter forwards " << drafter_calls;
    std::snprintf(buf, sizeof buf, "%.3f", drafter_overhead());
    s << ", c " << buf;
  }
  std::snprintf(buf, sizeof buf, "%.1f", tokens_per_second());
  s << ", " << tokens << " tokens at " << buf << " tokens/s";
  return s.str();
}

void SpeculativeStats::add(const SpeculativeStats& o) {
  ANVIL_CHECK(o.gamma == gamma && o.tree_width == tree_width && o.tree_nodes == tree_nodes &&
                  o.reached.size() == reached.size(),
              "SpeculativeStats: cannot add gamma ", o.gamma, " (width ", o.tree_width, ") to gamma ", gamma, " (width ",
              tree_width, ")");
  sequences += o.sequences, tokens += o.tokens, committed += o.committed;
  target_calls += o.target_calls, target_row_forwards += o.target_row_forwards, drafter_calls += o.drafter_calls;
  for (size_t i = 0; i < reached.size(); ++i) reached[i] += o.reached[i], accepted[i] += o.accepted[i];
  prefill_seconds += o.prefill_seconds, draft_seconds += o.draft_seconds, target_seconds += o.target_seconds;
  verify_seconds += o.verify_seconds, total_seconds += o.total_seconds;
}

// ---- Decoding ----

namespace {

// Decodes the prompts `which` (all of one length P) as one batch; adds to out and stats.
void speculative_batch(TransformerLM& target, Drafter& drafter, const std::vector<std::vector<int32_t>>& prompts,
                       const std::vector<size_t>& which, int max_new_tokens, const SamplingConfig& cfg, int gamma,
                       std::optional<int32_t> stop_token, std::vector<std::vector<int32_t>>& out,
                       SpeculativeStats& stats) {
  const int64_t B = static_cast<int64_t>(which.size());
  const int64_t P = static_cast<int64_t>(prompts[which[0]].size());
  const int64_t V = target.config().vocab_size;
  const int64_t W = gamma + 1;  // tokens per verification call: the last committed one and the drafts
  const bool greedy = cfg.temperature == 0;
  // A row verifies with <= P + max_new_tokens - 1 committed tokens, all but the last in the cache.
  const int64_t max_len = P + max_new_tokens + gamma - 1;
  const Clock::time_point prefill_start = Clock::now();
  KVCache kv(target.config(), B, max_len, target.device(), target.compute_dtype());
  // Target invariant: row b's cache holds every committed token but the last (length[b] - 1).
  std::vector<std::vector<int32_t>> seq(static_cast<size_t>(B));
  DraftSetup setup;
  setup.gamma = gamma;
  setup.max_len = max_len;
  setup.sampling = cfg;
  for (int64_t b = 0; b < B; ++b) {
    seq[b] = prompts[which[b]];
    setup.prompts.push_back(seq[b]);
    setup.sequences.push_back(static_cast<uint32_t>(which[b]));
  }
  if (P > 1) {
    Tensor ids = Tensor::empty({B, P - 1}, DType::I32);
    for (int64_t b = 0; b < B; ++b) std::copy(seq[b].begin(), seq[b].end() - 1, ids.data<int32_t>() + b * (P - 1));
    target.forward_cached(ids.to(target.device()), kv, /*last_position_only=*/true, drafter.target_taps());
  }
  drafter.begin(setup);
  stats.prefill_seconds += seconds_since(prefill_start);

  std::vector<bool> active(static_cast<size_t>(B), true);
  std::vector<int> accepted(static_cast<size_t>(B), 0);
  std::vector<int32_t> next(static_cast<size_t>(B), 0);
  std::vector<double> p(static_cast<size_t>(W * V)), uniforms(static_cast<size_t>(W), 0.0);
  Tensor ids = Tensor::empty({B, W}, DType::I32);
  for (uint32_t round = 0;; ++round) {
    Clock::time_point t0 = Clock::now();
    const DraftBlock block = drafter.propose(round, active);
    stats.draft_seconds += seconds_since(t0);
    stats.drafter_calls += block.forwards;
    ANVIL_CHECK(block.gamma == gamma && block.vocab == V && static_cast<int64_t>(block.tokens.size()) == B * gamma &&
                    static_cast<int64_t>(block.q.size()) == B * gamma * V,
                "speculative decoding: the drafter returned a block of the wrong shape (gamma ", block.gamma,
                ", vocab ", block.vocab, ", ", block.tokens.size(), " tokens) for ", B, " rows of gamma ", gamma,
                " over ", V, " tokens");
    for (int64_t b = 0; b < B; ++b) {
      int32_t* row = ids.data<int32_t>() + b * W;
      row[0] = seq[b].back();
      for (int i = 0; i < gamma; ++i) row[1 + i] = active[b] ? block.tokens[b * gamma + i] : seq[b].back();
      // A finished row rides along from slot 0, so it never runs out of room.
      if (!active[b]) kv.truncate(b, 0);
    }
    t0 = Clock::now();
    const Tensor logits = host_f32(target.forward_cached(ids.to(target.device()), kv, false, drafter.target_taps()));
    stats.target_seconds += seconds_since(t0);
    ++stats.target_calls;

    t0 = Clock::now();
    for (int64_t b = 0; b < B; ++b) {
      if (!active[b]) continue;
      ++stats.target_row_forwards;
      verification_inputs(logits.data<float>(), b, W, V, cfg, setup.sequences[b], round, greedy, p, uniforms);
      ChainRow chain;
      chain.gamma = gamma;
      chain.vocab = V;
      chain.draft = block.tokens.data() + b * gamma;
      chain.q = block.q.data() + b * gamma * V;
      chain.p = p.data();
      const ChainVerdict verdict = verify_chain(chain, uniforms.data(), greedy);
      accepted[b] = verdict.accepted;
      next[b] = verdict.next;
      for (int i = 0; i < gamma && i <= verdict.accepted; ++i) {
        ++stats.reached[i];
        if (i < verdict.accepted) ++stats.accepted[i];
      }
      stats.committed += verdict.accepted + 1;
      // Commit x_1..x_n, then next; the cache keeps the old committed tokens and x_1..x_n.
      const int64_t length = static_cast<int64_t>(seq[b].size());
      kv.truncate(b, length + verdict.accepted);
      std::vector<int32_t> tokens(chain.draft, chain.draft + verdict.accepted);
      tokens.push_back(verdict.next);
      stats.tokens += commit_tokens(tokens, max_new_tokens, stop_token, seq[b], out[which[b]]);
    }
    stats.verify_seconds += seconds_since(t0);
    // The drafter hears this round's verdict for every row that was active in it.
    drafter.commit(active, accepted, next);
    if (!still_active(active, out, which, max_new_tokens, stop_token)) break;
  }
}

}  // namespace

SpeculativeResult empty_speculative_result(size_t prompts, int depth) {
  SpeculativeResult result;
  result.tokens.resize(prompts);
  SpeculativeStats& stats = result.stats;
  stats.gamma = depth;
  stats.sequences = static_cast<int64_t>(prompts);
  stats.reached.assign(static_cast<size_t>(depth), 0);
  stats.accepted.assign(static_cast<size_t>(depth), 0);
  return result;
}

void check_speculative_call(const ModelConfig& mc, int64_t drafter_vocab, int64_t drafter_positions,
                            const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                            const SamplingConfig& config, int gamma, std::optional<int32_t> stop_token) {
  config.validate();
  ANVIL_CHECK(gamma >= 1, "speculative decoding: gamma (draft tokens per target forward) must be >= 1, got ", gamma,
              " — choose a gamma of 1 or more (4 is a common choice)");
  ANVIL_CHECK(drafter_vocab == mc.vocab_size, "speculative decoding: the drafter's vocabulary has ",
              drafter_vocab, " tokens but the target's has ", mc.vocab_size,
              " — a drafter must share the target's tokenizer and vocab_size (train it with the target's tokenizer)");
  ANVIL_CHECK(max_new_tokens >= 0, "speculative decoding: max_new_tokens must be >= 0, got ", max_new_tokens);
  ANVIL_CHECK(!stop_token || (*stop_token >= 0 && *stop_token < mc.vocab_size), "speculative decoding: stop token ",
              stop_token.value_or(0), " is outside the vocabulary [0, ", mc.vocab_size, ")");
  ANVIL_CHECK(prompts.size() <= std::numeric_limits<uint32_t>::max(), "speculative decoding: too many prompts");
  const int64_t room = std::min(mc.max_position_embeddings, drafter_positions);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& pr = prompts[i];
    ANVIL_CHECK(!pr.empty(), "speculative decoding: prompt ", i, " is empty — every prompt needs at least one token");
    const int64_t need = static_cast<int64_t>(pr.size()) + max_new_tokens + gamma - 1;
    ANVIL_CHECK(need <= room, "speculative decoding: prompt ", i, " has ", pr.size(), " tokens; with ", max_new_tokens,
                " new tokens and gamma ", gamma, " it needs ", need, " positions (prompt + new tokens + gamma - 1), "
                "more than the ", room, " the ", mc.max_position_embeddings <= drafter_positions ? "target" : "drafter",
                " has (max_position_embeddings) — shorten the prompt, lower max_new_tokens to ",
                std::max<int64_t>(0, room - static_cast<int64_t>(pr.size()) - gamma + 1), " or lower gamma");
    for (size_t t = 0; t < pr.size(); ++t)
      ANVIL_CHECK(pr[t] >= 0 && pr[t] < mc.vocab_size, "speculative decoding: prompt ", i, " token ", t, " is ", pr[t],
                  ", outside the vocabulary [0, ", mc.vocab_size, ")");
  }
}

SpeculativeResult speculative_generate(TransformerLM& target, Drafter& drafter,
                                       const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                                       const SamplingConfig& config, int gamma, std::optional<int32_t> stop_token) {
  check_speculative_call(target.config(), drafter.vocab_size(), drafter.max_positions(), prompts, max_new_tokens,
                         config, gamma, stop_token);
  SpeculativeResult result = empty_speculative_result(prompts.size(), gamma);
  SpeculativeStats& stats = result.stats;
  if (max_new_tokens == 0) return result;
  const Clock::time_point t0 = Clock::now();
  for (const auto& [length, which] : prompts_by_length(prompts))
    speculative_batch(target, drafter, prompts, which, max_new_tokens, config, gamma, stop_token, result.tokens, stats);
  stats.total_seconds = seconds_since(t0);
  return result;
}

}  // namespace anvil
