#include "eval/generate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>

#include "core/rng.h"

namespace anvil {

void SamplingConfig::validate() const {
  ANVIL_CHECK(std::isfinite(temperature) && temperature >= 0, "sampling: temperature must be finite and >= 0 (0 = greedy), got ",
              temperature);
  ANVIL_CHECK(top_k >= 0, "sampling: top_k must be >= 0 (0 = off), got ", top_k);
  ANVIL_CHECK(top_p > 0 && top_p <= 1, "sampling: top_p must lie in (0, 1] (1 = off), got ", top_p);
}

double sampling_uniform(uint64_t seed, uint32_t sequence, uint32_t step) {
  const PhiloxBlock r = PhiloxStream(seed, kSampleStream + sequence, step).block(0);
  const uint64_t hi = r[0] >> 5, lo = r[1] >> 6;  // 27 + 26 bits
  return static_cast<double>((hi << 26) | lo) * (1.0 / 9007199254740992.0);  // / 2^53
}

namespace {

// The kept tokens (ascending ids) and their unnormalised probabilities.
struct Kept {
  std::vector<int32_t> ids;
  std::vector<double> weights;
  double total = 0;
};

void check_logits(const float* logits, int64_t vocab) {
  ANVIL_CHECK(vocab >= 1, "sampling: vocab must be >= 1, got ", vocab);
  bool any = false;
  for (int64_t i = 0; i < vocab; ++i) {
    const float x = logits[i];
    ANVIL_CHECK(!std::isnan(x) && x != std::numeric_limits<float>::infinity(), "sampling: logit of token ", i, " is ",
                x, " — the model produced non-finite logits");
    any = any || x != -std::numeric_limits<float>::infinity();
  }
  ANVIL_CHECK(any, "sampling: every one of the ", vocab, " logits is -inf; nothing can be sampled");
}

int32_t argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;  // first of equal maxima, as torch.argmax
  return static_cast<int32_t>(best);
}

Kept select(const float* logits, int64_t vocab, const SamplingConfig& cfg) {
  cfg.validate();
  check_logits(logits, vocab);
  Kept kept;
  if (cfg.temperature == 0) {
    kept.ids = {argmax(logits, vocab)};
    kept.weights = {1.0};
    kept.total = 1.0;
    return kept;
  }
  // 1. temperature (in double).
  std::vector<double> z(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) z[i] = static_cast<double>(logits[i]) / cfg.temperature;
  // 2. top-k: threshold at the k-th largest scaled logit; ties with it stay.
  double threshold = -std::numeric_limits<double>::infinity();
  if (cfg.top_k > 0 && cfg.top_k < vocab) {
    std::vector<double> sorted = z;
    std::nth_element(sorted.begin(), sorted.begin() + (cfg.top_k - 1), sorted.end(), std::greater<double>());
    threshold = sorted[static_cast<size_t>(cfg.top_k - 1)];
  }
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < vocab; ++i)
    if (z[i] >= threshold) m = std::max(m, z[i]);
  for (int64_t i = 0; i < vocab; ++i) {
    if (z[i] < threshold || z[i] == -std::numeric_limits<double>::infinity()) continue;
    const double w = std::exp(z[i] - m);
    if (w == 0) continue;  // underflow: probability 0, never drawn
    kept.ids.push_back(static_cast<int32_t>(i));
    kept.weights.push_back(w);
    kept.total += w;
  }
  // 3. top-p over the softmax of what top-k kept.
  if (cfg.top_p < 1.0 && kept.ids.size() > 1) {
    std::vector<size_t> order(kept.ids.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return kept.weights[a] != kept.weights[b] ? kept.weights[a] > kept.weights[b] : kept.ids[a] < kept.ids[b];
    });
    size_t n = 0;
    double before = 0;  // probability mass of the tokens ahead of order[n]
    while (n < order.size() && (n == 0 || before < cfg.top_p)) {
      before += kept.weights[order[n]] / kept.total;
      ++n;
    }
    order.resize(n);
    std::sort(order.begin(), order.end());  // back to ascending ids
    Kept nucleus;
    for (size_t j : order) {
      nucleus.ids.push_back(kept.ids[j]);
      nucleus.weights.push_back(kept.weights[j]);
      nucleus.total += kept.weights[j];
    }
    kept = std::move(nucleus);
  }
  return kept;
}

}  // namespace

std::vector<double> sampling_distribution(const float* logits, int64_t vocab, const SamplingConfig& config) {
  const Kept kept = select(logits, vocab, config);
  std::vector<double> p(static_cast<size_t>(vocab), 0.0);
  for (size_t j = 0; j < kept.ids.size(); ++j) p[kept.ids[j]] = kept.weights[j] / kept.total;
  return p;
}

int32_t sample_token(const float* logits, int64_t vocab, const SamplingConfig& config, double u) {
  ANVIL_CHECK(u >= 0 && u < 1, "sample_token: u must lie in [0, 1), got ", u);
  const Kept kept = select(logits, vocab, config);
  const double target = u * kept.total;
  double cum = 0;
  for (size_t j = 0; j < kept.ids.size(); ++j) {
    cum += kept.weights[j];
    if (target < cum) return kept.ids[j];
  }
  return kept.ids.back();  // rounding left target at the very top
}

namespace {

// Decodes the prompts `which` (all of length P) as one batch into out.
void generate_batch(TransformerLM& model, const std::vector<std::vector<int32_t>>& prompts,
                    const std::vector<size_t>& which, int max_new_tokens, const SamplingConfig& cfg,
                    std::optional<int32_t> stop_token, uint32_t first_index, std::vector<std::vector<int32_t>>& out) {
  const int64_t B = static_cast<int64_t>(which.size());
  const int64_t P = static_cast<int64_t>(prompts[which[0]].size());
  const int64_t V = model.config().vocab_size;
  // The last generated token is never fed back, so P + max_new_tokens - 1 positions suffice.
  // The cache and the ids live where the model computes; sampling reads the logits on the host.
  KVCache kv(model.config(), B, P + max_new_tokens - 1, model.device(), model.compute_dtype());
  Tensor ids = Tensor::empty({B, P}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    std::copy(prompts[which[b]].begin(), prompts[which[b]].end(), ids.data<int32_t>() + b * P);
  Tensor logits = host_f32(model.forward_cached(ids.to(model.device()), kv, /*last_position_only=*/true));
  std::vector<bool> done(static_cast<size_t>(B), false);
  Tensor next = Tensor::empty({B, 1}, DType::I32);
  for (int step = 0; step < max_new_tokens; ++step) {
    const float* rows = logits.data<float>();
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      int32_t tok = next.data<int32_t>()[b];  // finished rows keep feeding their last token
      if (!done[b]) {
        const uint32_t seq = first_index + static_cast<uint32_t>(which[b]);
        const double u = cfg.temperature == 0 ? 0.0 : sampling_uniform(cfg.seed, seq, static_cast<uint32_t>(step));
        tok = sample_token(rows + b * V, V, cfg, u);
        out[which[b]].push_back(tok);
        done[b] = stop_token && tok == *stop_token;
      }
      next.data<int32_t>()[b] = tok;
      all_done = all_done && done[b];
    }
    if (all_done || step + 1 == max_new_tokens) break;
    logits = host_f32(model.forward_cached(next.to(model.device()), kv));
  }
}

}  // namespace

std::vector<std::vector<int32_t>> generate(TransformerLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                          int max_new_tokens, const SamplingConfig& config,
                                          std::optional<int32_t> stop_token, uint32_t first_index) {
  config.validate();
  const ModelConfig& mc = model.config();
  ANVIL_CHECK(max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", max_new_tokens);
  ANVIL_CHECK(!stop_token || (*stop_token >= 0 && *stop_token < mc.vocab_size), "generate: stop token ",
              stop_token.value_or(0), " is outside the vocabulary [0, ", mc.vocab_size, ")");
  std::map<size_t, std::vector<size_t>> by_length;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    ANVIL_CHECK(!p.empty(), "generate: prompt ", i, " is empty — every prompt needs at least one token (e.g. BOS)");
    const int64_t total = static_cast<int64_t>(p.size()) + max_new_tokens;
    ANVIL_CHECK(total <= mc.max_position_embeddings, "generate: prompt ", i, " has ", p.size(), " tokens; with ",
                max_new_tokens, " new tokens that is ", total, " positions, more than max_position_embeddings = ",
                mc.max_position_embeddings, " — shorten the prompt or lower max_new_tokens to ",
                std::max<int64_t>(0, mc.max_position_embeddings - static_cast<int64_t>(p.size())));
    for (size_t t = 0; t < p.size(); ++t)
      ANVIL_CHECK(p[t] >= 0 && p[t] < mc.vocab_size, "generate: prompt ", i, " token ", t, " is ", p[t],
                  ", outside the vocabulary [0, ", mc.vocab_size, ")");
    by_length[p.size()].push_back(i);
  }
  ANVIL_CHECK(prompts.size() <= std::numeric_limits<uint32_t>::max() - first_index, "generate: too many prompts");
  std::vector<std::vector<int32_t>> out(prompts.size());
  if (max_new_tokens == 0) return out;
  for (const auto& [length, which] : by_length)
    generate_batch(model, prompts, which, max_new_tokens, config, stop_token, first_index, out);
  return out;
}

std::string complete_text(TransformerLM& model, const Tokenizer& tokenizer, const std::string& prompt, int64_t tokens,
                          const SamplingConfig& config, int32_t eos) {
  std::vector<int32_t> ids = tokenizer.encode(prompt);
  if (ids.empty()) ids.push_back(eos >= 0 ? eos : 0);  // an empty prompt starts a new document
  const int64_t room = model.config().max_position_embeddings - static_cast<int64_t>(ids.size());
  const auto out = generate(model, {ids}, static_cast<int>(std::min(tokens, room)), config,
                            eos >= 0 ? std::optional<int32_t>(eos) : std::nullopt);
  return prompt + tokenizer.decode(out[0]);
}

int32_t end_of_document_id(const TokenStore* store, const Tokenizer& tokenizer) {
  if (store) return store->info().eos_id;
  if (const auto id = tokenizer.token_to_id("<|endoftext|>")) return *id;
  return -1;
}

}  // namespace anvil
