// Dr.LLM block actions in TransformerLM (models/transformer_drllm.cpp, models/drllm_actions.h):
// a forward with forced per-sequence actions equals a manual composition of the blocks (skip: the
// input, execute: one pass, repeat: two), fresh routers leave the model equal to its backbone bit
// for bit, routers deciding differently per row in one batch equal per-sequence runs, and KV-cached
// decoding with skips and repeats (decided at prefill, or fixed beforehand) equals a full
// recompute with the same decisions.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "models/block.h"
#include "models/family.h"
#include "models/kv_cache.h"
#include "models/transformer.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

ModelConfig llama(int64_t layers) {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 67;
  c.hidden_size = 32;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 48;
  c.max_position_embeddings = 64;
  c.norm_eps = 1e-5;
  return c;
}

RouterSpec drllm_spec(std::vector<int64_t> layers, int64_t windows = 4) {
  RouterSpec s;
  s.kind = RouterKind::DrLLM;
  s.layers = std::move(layers);
  s.hidden = 8;
  s.windows = windows;
  return s;
}

std::unique_ptr<TransformerLM> routed_model(const ModelConfig& c, const RouterSpec& spec) {
  auto m = std::make_unique<TransformerLM>(c, ModelLayout{}, &spec);
  m->init_weights(3);
  randomize_params(m->params());  // the routers too: decisions then differ between sequences
  uint32_t s = 900;
  for (Param* p : m->router_params()) p->value.copy_(random_tensor(p->value.shape(), s++, -3.0f, 3.0f));
  return m;
}

// Row b of x [B, ...] as [1, ...].
Tensor row(const Tensor& x, int64_t b) { return x.slice(0, b, b + 1).contiguous(); }

Tensor forced(const std::vector<std::vector<int32_t>>& a) {
  const int64_t B = static_cast<int64_t>(a.size()), L = static_cast<int64_t>(a[0].size());
  Tensor t = Tensor::empty({B, L}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l) t.data<int32_t>()[b * L + l] = a[b][l];
  return t;
}

Tensor hidden_under(TransformerLM& m, const Tensor& ids, const Tensor& actions,
                    std::shared_ptr<StepContext>* out_ctx = nullptr) {
  auto ctx = std::make_shared<StepContext>();
  ctx->layer_actions = actions;
  Cache c;
  c.set_context(ctx);
  Tensor h = m.forward_hidden(ids, c);
  if (out_ctx) *out_ctx = ctx;
  return h;
}

}  // namespace

TEST(DrLLMModel, ForcedActionsEqualAManualCompositionOfBlocks) {
  const ModelConfig c = llama(4);
  auto model = routed_model(c, drllm_spec({1, 2}));
  const Tensor ids = random_ids({3, 12}, 67, 5);
  const std::vector<std::vector<int32_t>> actions = {{1, 0, 2, 1}, {2, 1, 0, 0}, {1, 1, 1, 1}};
  std::shared_ptr<StepContext> ctx;
  const Tensor h = hidden_under(*model, ids, forced(actions), &ctx);
  // The routed layers recorded their inputs' windowed means, in order.
  ASSERT_EQ(ctx->drllm_inputs.size(), 2u);
  EXPECT_EQ(ctx->drllm_inputs[0].layer, 1);
  EXPECT_EQ(ctx->drllm_inputs[1].means.shape(), Shape({3, 4, 32}));
  // The manual composition: the same blocks built by hand with the model's weights, per row.
  const Family& family = family_of(c);
  auto rope = make_rope_tables(c.resolved_head_dim(), c.max_position_embeddings, c.rope_theta, c.rope_scaling);
  std::vector<std::unique_ptr<TransformerBlock>> blocks;
  for (int64_t l = 0; l < 4; ++l) {
    blocks.push_back(std::make_unique<TransformerBlock>(family.layer(l), c, rope));
    for (Param* p : blocks.back()->params()) p->value.copy_(model->param(p->name).value);
  }
  const Tensor& table = model->param(std::string(family.embed_tokens) + ".weight").value;
  for (int64_t b = 0; b < 3; ++b) {
    Tensor x = Tensor::empty({1, 12, 32});
    for (int64_t t = 0; t < 12; ++t) {
      Tensor dst = x.select(1, t);
      dst.copy_(table.slice(0, ids.data<int32_t>()[b * 12 + t], ids.data<int32_t>()[b * 12 + t] + 1));
    }
    for (int64_t l = 0; l < 4; ++l)
      for (int pass = 0; pass < actions[b][l]; ++pass) x = blocks[l]->infer(x);
    const Tensor ref = model->final_norm().infer(x);
    EXPECT_LT(max_abs_diff(row(h, b), ref), 2e-5) << "row " << b;
  }
  // Backward through a skipped/repeated layer is refused with a clear error.
  auto ctx2 = std::make_shared<StepContext>();
  ctx2->layer_actions = forced(actions);
  Cache c2;
  c2.set_context(ctx2);
  const Tensor h2 = model->forward_hidden(ids, c2);
  EXPECT_NE(error_of([&] { model->backward_hidden(h2, c2); }).find("Dr.LLM"), std::string::npos);
}

TEST(DrLLMModel, FreshRoutersLeaveTheBackboneBitForBit) {
  const ModelConfig c = llama(3);
  const RouterSpec spec = drllm_spec({0, 1});
  TransformerLM base(c);
  base.init_weights(3);
  randomize_params(base.params());
  TransformerLM routed(c, ModelLayout{}, &spec);
  routed.init_weights(3);
  ASSERT_EQ(routed.router_params().size(), 8u);  // fc1/fc2 weight and bias of two layers
  for (Param* p : base.params()) routed.param(p->name).value.copy_(p->value);
  const Tensor ids = random_ids({2, 9}, 67, 8);
  Cache a, b;
  EXPECT_EQ(max_abs_diff(routed.forward(ids, a), base.forward(ids, b)), 0.0);
  KVCache kv_a(c, 2, 16), kv_b(c, 2, 16);
  EXPECT_EQ(max_abs_diff(routed.forward_cached(ids, kv_a), base.forward_cached(ids, kv_b)), 0.0);
  for (int64_t r = 0; r < 2; ++r) EXPECT_EQ(kv_a.block_action(r, 1), 1);
}

TEST(DrLLMModel, MixedDecisionsInABatchEqualPerSequenceRuns) {
  const ModelConfig c = llama(4);
  auto model = routed_model(c, drllm_spec({0, 1, 2}, 3));
  const Tensor ids = random_ids({6, 10}, 67, 12);
  auto ctx = std::make_shared<StepContext>();
  Cache cache;
  cache.set_context(ctx);
  const Tensor h = model->forward_hidden(ids, cache);
  // The routers chose different actions for different rows somewhere (else the test shows nothing).
  std::vector<int32_t> seen;
  bool mixed = false;
  for (const auto& in : ctx->drllm_inputs) {
    const std::vector<int32_t> a = drllm_actions(model->drllm_routers()->at(in.layer)->infer(in.means));
    for (int32_t v : a) mixed = mixed || v != a[0];
    seen.insert(seen.end(), a.begin(), a.end());
  }
  EXPECT_TRUE(mixed);
  EXPECT_NE(std::find(seen.begin(), seen.end(), 0), seen.end());
  EXPECT_NE(std::find(seen.begin(), seen.end(), 2), seen.end());
  for (int64_t b = 0; b < 6; ++b) {
    Cache one;
    EXPECT_LT(max_abs_diff(row(h, b), model->forward_hidden(row(ids, b), one)), 2e-5) << "row " << b;
  }
}

TEST(DrLLMModel, DecodingWithSkipsAndRepeatsEqualsAFullRecompute) {
  const ModelConfig c = llama(4);
  auto model = routed_model(c, drllm_spec({1, 2}, 4));
  const int64_t B = 4, P = 7, steps = 5, L = 4;
  KVCache kv(c, B, P + steps);
  // Some decisions fixed beforehand (both rare actions present), the rest decided at prefill.
  kv.set_block_action(0, 1, 2);
  kv.set_block_action(1, 1, 0);
  kv.set_block_action(2, 2, 2);
  kv.set_block_action(3, 2, 0);
  Tensor all = Tensor::empty({B, P + steps}, DType::I32);
  const Tensor prompt = random_ids({B, P}, 67, 21);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < P; ++t) all.data<int32_t>()[b * (P + steps) + t] = prompt.data<int32_t>()[b * P + t];
  std::vector<Tensor> logits = {model->forward_cached(prompt, kv, true)};
  for (int64_t s = 0; s < steps; ++s) {
    const Tensor next = random_ids({B, 1}, 67, 30 + static_cast<uint32_t>(s));
    for (int64_t b = 0; b < B; ++b) all.data<int32_t>()[b * (P + steps) + P + s] = next.data<int32_t>()[b];
    if (s + 1 < steps) logits.push_back(model->forward_cached(next, kv));
  }
  std::vector<std::vector<int32_t>> decided(B, std::vector<int32_t>(L, 1));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l : {1, 2}) decided[b][l] = kv.block_action(b, l);
  EXPECT_EQ(decided[0][1], 2);
  EXPECT_EQ(decided[1][1], 0);
  // The full recompute of prompt + decoded tokens under the same decisions.
  const Tensor full_ids = all.slice(1, 0, P + steps - 1).contiguous();
  auto ctx = std::make_shared<StepContext>();
  ctx->layer_actions = forced(decided);
  Cache cache;
  cache.set_context(ctx);
  const Tensor full = model->forward(full_ids, cache);
  for (size_t s = 0; s < logits.size(); ++s) {
    const int64_t t = P - 1 + static_cast<int64_t>(s);
    EXPECT_LT(max_abs_diff(logits[s].select(1, 0).contiguous(), full.select(1, t).contiguous()), 1e-4) << "step " << s;
  }
  // Reset forgets the decisions.
  kv.reset();
  EXPECT_EQ(kv.block_action(0, 1), -1);
}
