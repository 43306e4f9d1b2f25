// MindSkip routers in a whole model (models/layer_router.h): the spec's defaults and errors,
// zero routers = the backbone bit for bit, a routed stack against the naive soft-gated one
// (everything computed, then scaled by g), batched mixed decisions against per-sequence runs,
// KV-cached decoding against a full recompute with the same decisions, and early exit.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/elementwise.h"
#include "models/layer_router.h"
#include "models/transformer.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

RouterSpec spec_of(SkipScope scope, SkipUnit unit, std::vector<int64_t> layers = {0, 1}) {
  RouterSpec s;
  s.scope = scope;
  s.unit = unit;
  s.layers = std::move(layers);
  return s;
}

// A random backbone (keyed by param name: routed or not, the same weights) with router weights
// uniform in +-router_scale.
std::unique_ptr<TransformerLM> make_model(const ModelConfig& c, const RouterSpec* rs, float router_scale = 0.0f) {
  auto m = std::make_unique<TransformerLM>(c, ModelLayout{}, rs);
  m->init_weights(7);
  randomize_params(m->params());
  uint32_t stream = 40;
  for (Param* p : m->router_params()) p->value.copy_(random_tensor(p->value.shape(), stream++, -router_scale, router_scale));
  return m;
}

Tensor logits_of(TransformerLM& m, const Tensor& ids) {
  Cache c;
  c.set_context(std::make_shared<StepContext>());
  return m.forward(ids, c);
}

// Prefill `prompt` tokens of ids, then one token per step: the logits of every position [B, T, V].
Tensor cached_logits(TransformerLM& m, KVCache& kv, const Tensor& ids, int64_t prompt, int64_t exit_layer = -1) {
  const int64_t B = ids.size(0), T = ids.size(1), V = m.config().vocab_size;
  Tensor out = Tensor::empty({B, T, V});
  const Tensor first = m.forward_cached(ids.slice(1, 0, prompt).contiguous(), kv, false, nullptr, exit_layer);
  out.slice(1, 0, prompt).copy_(first);
  for (int64_t t = prompt; t < T; ++t)
    out.slice(1, t, t + 1).copy_(m.forward_cached(ids.slice(1, t, t + 1).contiguous(), kv, false, nullptr, exit_layer));
  return out;
}

ModelConfig gpt2_config() {
  ModelConfig c = ModelConfig::gpt2();
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.num_hidden_layers = 3;
  c.num_attention_heads = c.num_key_value_heads = 4;
  c.intermediate_size = 64;
  c.max_position_embeddings = 32;
  return c;
}

struct Kind {
  SkipScope scope;
  SkipUnit unit;
};
const Kind kKinds[] = {{SkipScope::Attention, SkipUnit::Sequence}, {SkipScope::Attention, SkipUnit::Token},
                       {SkipScope::FeedForward, SkipUnit::Token}, {SkipScope::Block, SkipUnit::Sequence}};
std::string name_of(const Kind& k) { return std::string(skip_scope_name(k.scope)) + "/" + skip_unit_name(k.unit); }

}  // namespace

TEST(RouterSpec, DefaultLayersAndClearErrors) {
  EXPECT_EQ(default_router_layers(8, 3), (std::vector<int64_t>{4, 5, 6}));
  EXPECT_EQ(default_router_layers(4, 16), (std::vector<int64_t>{0, 1, 2}));
  RouterSpec s = spec_of(SkipScope::Attention, SkipUnit::Sequence, {2, 7});
  EXPECT_NE(error_of([&] { check_router_spec(s, 8); }).find("final one (7) never gets a router"), std::string::npos);
  s.layers = {-1};
  EXPECT_NE(error_of([&] { check_router_spec(s, 8); }).find("layer -1 is outside [0, 7)"), std::string::npos);
  s.layers = {3, 3};
  EXPECT_NE(error_of([&] { check_router_spec(s, 8); }).find("sorted and unique"), std::string::npos);
  s.layers = {3};
  for (float tau : {0.0f, 1.0f, -0.5f}) {
    s.tau = tau;
    EXPECT_NE(error_of([&] { check_router_spec(s, 8); }).find("router.tau"), std::string::npos) << tau;
  }
  s.tau = 0.5f;
  EXPECT_NO_THROW(check_router_spec(s, 8));
  s.layers = {5};  // the model's constructor checks too
  EXPECT_NE(error_of([&] { TransformerLM m(spec_llama(3), ModelLayout{}, &s); }).find("outside [0, 2)"),
            std::string::npos);
}

TEST(RouterModel, ZeroRoutersEqualTheBackboneBitForBit) {
  for (const ModelConfig& c : {spec_llama(3), gpt2_config()}) {
    auto base = make_model(c, nullptr);
    const Tensor ids = random_ids({2, 7}, static_cast<int32_t>(c.vocab_size), 3);
    const Tensor want = logits_of(*base, ids);
    KVCache base_kv(c, 2, 10);
    const Tensor want_cached = cached_logits(*base, base_kv, ids, 4);
    for (const Kind& k : kKinds) {
      const RouterSpec rs = spec_of(k.scope, k.unit);
      auto routed = make_model(c, &rs);
      ASSERT_EQ(routed->router_params().size(), 2u);
      EXPECT_EQ(routed->router_params()[0]->name, std::string(family_of(c).layer(0)) + ".router.weight");
      EXPECT_EQ(routed->router_params()[0]->value.shape(), Shape({1, c.hidden_size}));
      Cache cache;
      cache.set_context(std::make_shared<StepContext>());
      const Tensor got = routed->forward(ids, cache);
      EXPECT_EQ(max_abs_diff(got, want), 0.0) << name_of(k);
      const RouterGateStats& stats = cache.context().router_stats;
      EXPECT_EQ(stats.units, k.unit == SkipUnit::Sequence ? 4.0 : 28.0) << name_of(k);
      EXPECT_EQ(stats.gate_sum / stats.units, 1.0) << name_of(k);  // capacity 1.0
      KVCache kv(c, 2, 10);
      EXPECT_EQ(max_abs_diff(cached_logits(*routed, kv, ids, 4), want_cached), 0.0) << name_of(k);
    }
  }
}

TEST(RouterModel, BatchedMixedDecisionsEqualPerSequenceRuns) {
  const ModelConfig c = spec_llama(3);
  const Tensor ids = random_ids({3, 8}, 48, 5);
  for (const Kind& k : kKinds) {
    const RouterSpec rs = spec_of(k.scope, k.unit);
    auto m = make_model(c, &rs, k.unit == SkipUnit::Sequence ? 8.0f : 2.0f);
    m->reset_routed_rows();
    const Tensor batched = logits_of(*m, ids);
    const RoutedRows rows = m->routed_rows();
    const bool mlp = k.scope == SkipScope::FeedForward;
    const int64_t run = mlp ? rows.mlp_run : rows.attention_run, total = mlp ? rows.mlp_total : rows.attention_total;
    ASSERT_GT(run, total - 2 * 3 * 8) << name_of(k) << ": the routers skip every routed row";
    ASSERT_LT(run, total) << name_of(k) << ": the routers skip nothing";
    KVCache kv(c, 3, 8);
    const Tensor batched_cached = cached_logits(*m, kv, ids, 5);
    for (int64_t b = 0; b < 3; ++b) {
      const Tensor one = ids.slice(0, b, b + 1).contiguous();
      EXPECT_LE(max_abs_diff(logits_of(*m, one), batched.slice(0, b, b + 1).contiguous()), 1e-5) << name_of(k) << b;
      KVCache kv1(c, 1, 8);
      EXPECT_LE(max_abs_diff(cached_logits(*m, kv1, one, 5), batched_cached.slice(0, b, b + 1).contiguous()), 1e-5)
          << name_of(k) << " row " << b;
    }
  }
}

TEST(RouterModel, CachedDecodingEqualsFullRecomputeWithTheSameDecisions) {
  const ModelConfig c = spec_llama(3);
  const Tensor ids = random_ids({2, 9}, 48, 8);
  for (const Kind& k : kKinds) {
    const RouterSpec rs = spec_of(k.scope, k.unit);
    auto m = make_model(c, &rs, k.unit == SkipUnit::Sequence ? 8.0f : 2.0f);
    KVCache kv(c, 2, 12);
    m->reset_routed_rows();
    const Tensor cached = cached_logits(*m, kv, ids, 5);
    const RoutedRows rows = m->routed_rows();
    EXPECT_LT(k.scope == SkipScope::FeedForward ? rows.mlp_run : rows.attention_run,
              k.scope == SkipScope::FeedForward ? rows.mlp_total : rows.attention_total)
        << name_of(k) << ": nothing skipped";
    if (k.unit == SkipUnit::Sequence)  // the prefill's decisions, forced on the full sequences
      for (int64_t layer : rs.layers) {
        const std::vector<int8_t>& run = kv.layer(layer).route->run;
        m->mindskip_router(layer)->forced.assign(run.begin(), run.end());
      }
    EXPECT_LE(max_abs_diff(logits_of(*m, ids), cached), 2e-5) << name_of(k);
  }
}

TEST(RouterModel, EarlyExitEqualsTheTruncatedModel) {
  const ModelConfig c = spec_llama(3);
  ModelConfig short_c = c;
  short_c.num_hidden_layers = 2;
  auto full = make_model(c, nullptr);
  TransformerLM truncated(short_c);
  for (Param* p : truncated.params()) p->value.copy_(full->param(p->name).value);
  const Tensor ids = random_ids({2, 7}, 48, 9);
  KVCache kv(c, 2, 8), short_kv(short_c, 2, 8);
  EXPECT_EQ(max_abs_diff(cached_logits(*full, kv, ids, 4, 2), cached_logits(truncated, short_kv, ids, 4)), 0.0);
  // Layers 0 and 1 of the full cache hold the truncated model's keys; the model then decodes on them in full.
  for (int64_t layer : {0, 1})
    EXPECT_EQ(max_abs_diff(kv.layer(layer).k.slice(1, 0, 7), short_kv.layer(layer).k.slice(1, 0, 7)), 0.0);
  for (int64_t bad : {0, 4})
    EXPECT_NE(error_of([&] { full->forward_cached(ids, kv, false, nullptr, bad); }).find("exit_layer"),
              std::string::npos);
}
