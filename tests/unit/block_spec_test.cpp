// The seams of models/ (issue 13): blocks built from a spec with a custom feed-forward and
// with gates (against a naive composition of the same parts, and finite differences), the
// family table, init rules per param, LinearWeight, params that are not dense floats, and
// memory_table summed from the parts against the closed-form size table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/rng.h"
#include "models/transformer.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

ModelConfig small_llama() {
  ModelConfig c = ModelConfig::llama();
  c.hidden_size = 16; c.num_attention_heads = 4; c.num_key_value_heads = 2; c.intermediate_size = 24;
  c.vocab_size = 37; c.num_hidden_layers = 2; c.max_position_embeddings = 16;
  return c;
}

// A feed-forward that is not an MLP: y = x * s with a learned per-channel scale s (host f32 loops).
class ScaleFeedForward : public FeedForward {
 public:
  ScaleFeedForward(const std::string& name, int64_t hidden)
      : scale(name + ".weight", Tensor::full({hidden}, 1.0), ParamRole::Vector, Init::Ones) {}
  Tensor forward(const Tensor& x, Cache& c) override {
    c["x"] = x.contiguous();
    return infer(x);
  }
  Tensor infer(const Tensor& x) override {
    const Tensor xc = x.contiguous();
    Tensor y = Tensor::empty(xc.shape());
    const int64_t C = scale.value.numel(), N = xc.numel() / C;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < C; ++i) y.data<float>()[n * C + i] = xc.data<float>()[n * C + i] * scale.value.data<float>()[i];
    return y;
  }
  Tensor backward(const Tensor& dy, Cache& c) override {
    const Tensor x = c.get("x"), dyc = dy.contiguous();
    Tensor dx = Tensor::empty(x.shape());
    const int64_t C = scale.value.numel(), N = x.numel() / C;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < C; ++i) {
        dx.data<float>()[n * C + i] = dyc.data<float>()[n * C + i] * scale.value.data<float>()[i];
        scale.grad.data<float>()[i] += dyc.data<float>()[n * C + i] * x.data<float>()[n * C + i];
      }
    c.clear();
    return dx;
  }
  void collect_params(std::vector<Param*>& out) override { out.push_back(&scale); }
  size_t activation_bytes(const ActivationDims& d) const override { return d.tokens * scale.value.numel() * d.act; }
  Param scale;
};

// A trivial token gate: w = 0.5 + x . v per token, v a learned vector (host f32 loops).
class DotGate : public BlockGate {
 public:
  DotGate(const std::string& name, int64_t hidden)
      : v(name + ".weight", Tensor::zeros({hidden}), ParamRole::Vector, Init::Zeros) {}
  Tensor forward(const Tensor& x, Cache& c) override {
    c["x"] = x.contiguous();
    return infer(x);
  }
  Tensor infer(const Tensor& x) override {
    const Tensor xc = x.contiguous();
    const int64_t C = v.value.numel(), N = xc.numel() / C;
    Tensor w = Tensor::empty({xc.size(0), xc.size(1)});
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.5;
      for (int64_t i = 0; i < C; ++i) s += xc.data<float>()[n * C + i] * v.value.data<float>()[i];
      w.data<float>()[n] = static_cast<float>(s);
    }
    return w;
  }
  Tensor backward(const Tensor& dw, Cache& c) override {
    const Tensor x = c.get("x"), dwc = dw.contiguous();
    Tensor dx = Tensor::empty(x.shape());
    const int64_t C = v.value.numel(), N = x.numel() / C;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < C; ++i) {
        dx.data<float>()[n * C + i] = dwc.data<float>()[n] * v.value.data<float>()[i];
        v.grad.data<float>()[i] += dwc.data<float>()[n] * x.data<float>()[n * C + i];
      }
    c.clear();
    return dx;
  }
  void collect_params(std::vector<Param*>& out) override { out.push_back(&v); }
  size_t activation_bytes(const ActivationDims& d) const override { return d.tokens * v.value.numel() * d.act; }
  Param v;
};

// Random values for every param (gains near 1), zeroed grads.
void randomize(Module& m) {
  for (Param* p : m.params()) {
    const bool gain = p->init == Init::Ones;
    p->value.copy_(random_tensor(p->value.shape(), stream_id(p->name.c_str()), gain ? 0.5f : -0.5f, gain ? 1.5f : 0.5f));
    p->zero_grad();
  }
}

void copy_params_by_name(Module& from, Module& to) {
  for (Param* dst : to.params()) {
    bool found = false;
    for (Param* src : from.params())
      if (src->name == dst->name) {
        dst->value.copy_(src->value);
        found = true;
      }
    ASSERT_TRUE(found) << dst->name;
  }
}

// out = x + w * f per token (w [B, T]).
Tensor naive_gated(const Tensor& x, const Tensor& f, const Tensor& w) {
  Tensor out = Tensor::empty(x.shape());
  const int64_t C = x.size(-1);
  for (int64_t n = 0; n < w.numel(); ++n)
    for (int64_t i = 0; i < C; ++i)
      out.data<float>()[n * C + i] = x.data<float>()[n * C + i] + w.data<float>()[n] * f.data<float>()[n * C + i];
  return out;
}

// Backward of L = sum(block(x) * r) against central differences on up to 48 elements of x and
// of every param (f32 forward, double loss: eps 1e-2 leaves O(eps^2) curvature and
// ~1e-6 |L| / eps rounding error, so 2e-2 of the largest gradient is a safe bound that still
// catches a missing or wrong term).
void check_grads(Module& m, Tensor x, const std::string& what) {
  Cache probe;
  const Tensor r = random_tensor(m.forward(x, probe).shape(), 99);
  probe.clear();
  auto loss = [&]() {
    Cache c;
    return dot(m.forward(x, c), r);
  };
  for (Param* p : m.params()) p->zero_grad();
  Cache c;
  m.forward(x, c);
  const Tensor dx = m.backward(r, c);
  EXPECT_EQ(c.bytes(), 0u) << what << ": backward left activations in the cache";
  auto compare = [&](Tensor& t, const Tensor& analytic, const std::string& name) {
    const double eps = 1e-2;
    const int64_t step = std::max<int64_t>(1, t.numel() / 48);
    double max_ref = 0, max_err = 0;
    for (int64_t i = 0; i < t.numel(); i += step) {
      float& e = t.data<float>()[i];
      const float saved = e;
      e = static_cast<float>(saved + eps);
      const double up = loss();
      e = static_cast<float>(saved - eps);
      const double down = loss();
      e = saved;
      const double numeric = (up - down) / (2 * eps);
      max_ref = std::max(max_ref, std::fabs(numeric));
      max_err = std::max(max_err, std::fabs(numeric - analytic.data<float>()[i]));
    }
    ASSERT_GT(max_ref, 0) << what << " " << name << ": numeric gradient is zero";
    EXPECT_LE(max_err / max_ref, 2e-2) << what << " " << name << ": max err " << max_err << " vs " << max_ref;
  };
  compare(x, dx, "dx");
  for (Param* p : m.params()) compare(p->value, p->grad, p->name);
}

BlockContext context(const std::string& prefix, const ModelConfig& c, std::shared_ptr<const RopeTables> rope) {
  return BlockContext{prefix, c, family_of(c), std::move(rope), nullptr, nullptr};
}

}  // namespace

TEST(BlockSpec, CustomFeedForwardFillsTheSlot) {
  const ModelConfig c = small_llama();
  auto rope = make_rope_tables(4, 16, 10000.0);
  BlockSpec spec = dense_block_spec();
  spec.feed_forward = [](const BlockContext& b) -> std::unique_ptr<FeedForward> {
    return std::make_unique<ScaleFeedForward>(b.prefix + ".mlp.scale", b.config.hidden_size);
  };
  const BlockContext ctx = context("model.layers.0", c, rope);
  TransformerBlock block(spec, ctx);
  std::vector<std::string> names;
  for (Param* p : block.params()) names.push_back(p->name);
  EXPECT_NE(std::find(names.begin(), names.end(), "model.layers.0.mlp.scale.weight"), names.end());
  EXPECT_EQ(std::find(names.begin(), names.end(), "model.layers.0.mlp.gate_proj.weight"), names.end());
  randomize(block);

  // The naive composition of the same parts: h = x + attn(norm1(x)); y = h + norm2(h) * s.
  auto norm1 = spec.norm("model.layers.0.input_layernorm", ctx);
  auto norm2 = spec.norm("model.layers.0.post_attention_layernorm", ctx);
  auto attn = spec.attention(ctx);
  ScaleFeedForward ff("model.layers.0.mlp.scale", c.hidden_size);
  for (Module* m : std::initializer_list<Module*>{norm1.get(), norm2.get(), attn.get(), &ff}) copy_params_by_name(block, *m);
  const Tensor x = random_tensor({2, 7, 16}, 5);
  const Tensor a = attn->infer(norm1->infer(x));
  const Tensor h = naive_gated(x, a, Tensor::full({2, 7}, 1.0));
  const Tensor want = naive_gated(h, ff.infer(norm2->infer(h)), Tensor::full({2, 7}, 1.0));
  Cache cache;
  const Tensor got = block.forward(x, cache);
  cache.clear();
  // The same kernels on the same inputs; only the residual adds differ in where they round (f32 ulps).
  EXPECT_LE(max_rel_diff(got, want), 1e-6);

  ActivationDims d;
  d.tokens = 14; d.batch = 2; d.seq_len = 7;
  EXPECT_EQ(block.activation_bytes(d), norm1->activation_bytes(d) + attn->activation_bytes(d) +
                                           norm2->activation_bytes(d) + 14 * 16 * 4);
  check_grads(block, random_tensor({2, 7, 16}, 6), "custom feed-forward block");
}

TEST(BlockSpec, GatesScaleEachSubBlockPerToken) {
  for (const char* family : {"gpt2", "llama"}) {
    ModelConfig c = ModelConfig::preset(family);
    c.hidden_size = 16; c.num_attention_heads = 4; c.num_key_value_heads = 2; c.intermediate_size = 24;
    if (std::string(family) == "gpt2") c.num_key_value_heads = 4;
    auto rope = std::string(family) == "gpt2" ? nullptr : make_rope_tables(4, 16, 10000.0);
    const Family& fam = family_of(c);
    BlockSpec spec = dense_block_spec();
    spec.gate = [](const BlockContext& b, SubBlock sub) -> std::unique_ptr<BlockGate> {
      return std::make_unique<DotGate>(b.prefix + (sub == SubBlock::Attention ? ".attn_gate" : ".mlp_gate"),
                                       b.config.hidden_size);
    };
    const std::string prefix = fam.layer(0);
    const BlockContext ctx = context(prefix, c, rope);
    TransformerBlock block(spec, ctx);
    randomize(block);
    for (Param* p : block.params())  // gates well away from 0 and 1, and varying per token
      if (p->name.find("_gate") != std::string::npos) p->value.copy_(random_tensor(p->value.shape(), 7, -0.3f, 0.3f));

    auto norm1 = spec.norm(prefix + "." + fam.norm1, ctx);
    auto norm2 = spec.norm(prefix + "." + fam.norm2, ctx);
    auto attn = spec.attention(ctx);
    auto ff = spec.feed_forward(ctx);
    DotGate g1(prefix + ".attn_gate", 16), g2(prefix + ".mlp_gate", 16);
    for (Module* m : std::initializer_list<Module*>{norm1.get(), norm2.get(), attn.get(), ff.get(), &g1, &g2})
      copy_params_by_name(block, *m);
    const Tensor x = random_tensor({2, 7, 16}, 5);
    const Tensor h = naive_gated(x, attn->infer(norm1->infer(x)), g1.infer(x));
    const Tensor want = naive_gated(h, ff->infer(norm2->infer(h)), g2.infer(h));
    Cache cache;
    EXPECT_LE(max_rel_diff(block.forward(x, cache), want), 1e-6) << family;
    cache.clear();
    check_grads(block, random_tensor({2, 7, 16}, 6), std::string(family) + " gated block");
  }
}

TEST(Family, TablesNameTheHuggingFaceParams) {
  ModelConfig g = ModelConfig::gpt2();
  g.vocab_size = 37; g.hidden_size = 16; g.num_hidden_layers = 1; g.num_attention_heads = g.num_key_value_heads = 4;
  g.intermediate_size = 24; g.max_position_embeddings = 16;
  TransformerLM gpt2(g);
  std::vector<std::string> names;
  for (Param* p : gpt2.params()) names.push_back(p->name);
  const std::vector<std::string> want = {
      "transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
      "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias", "transformer.h.0.attn.c_proj.weight",
      "transformer.h.0.attn.c_proj.bias", "transformer.h.0.ln_2.weight", "transformer.h.0.ln_2.bias",
      "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias", "transformer.h.0.mlp.c_proj.weight",
      "transformer.h.0.mlp.c_proj.bias", "transformer.ln_f.weight", "transformer.ln_f.bias"};
  EXPECT_EQ(names, want);
  for (const char* type : {"llama", "qwen2", "mistral"}) {
    ModelConfig c = ModelConfig::preset(type);
    EXPECT_EQ(std::string(family_of(c).layer(3)), "model.layers.3") << type;
    EXPECT_EQ(family_of(c).norm, NormKind::RMSNorm) << type;
    EXPECT_EQ(family_of(c).qkv, QkvLayout::Separate) << type;
  }
  EXPECT_TRUE(family_of(g).is_transposed("transformer.h.0.mlp.c_fc.weight"));
  EXPECT_FALSE(family_of(g).is_transposed("transformer.h.0.mlp.c_fc.bias"));
}

TEST(InitRules, EachParamFollowsItsModulesRule) {
  std::vector<Param> ps;
  ps.emplace_back("a.weight", Tensor::full({3, 4}, 7.0), ParamRole::Matrix, Init::Normal);
  ps.emplace_back("b.weight", Tensor::full({3, 4}, 7.0), ParamRole::Matrix, Init::ResidualNormal);
  ps.emplace_back("c.weight", Tensor::full({4}, 7.0), ParamRole::Matrix, Init::Zeros);  // e.g. LoRA's B
  ps.emplace_back("d.weight", Tensor::full({4}, 7.0), ParamRole::Vector, Init::Ones);
  ps.emplace_back("e.qweight", Tensor::full({4}, 7.0, DType::I32), ParamRole::Matrix, Init::Keep);
  std::vector<Param*> list;
  for (Param& p : ps) list.push_back(&p);
  init_params(list, 42, 0.5f, 0.125f);
  for (int k = 0; k < 2; ++k) {
    Tensor want = Tensor::empty({3, 4});
    PhiloxStream(42, stream_id(ps[k].name.c_str())).fill_normal(want, 0.0f, k == 0 ? 0.5f : 0.125f);
    EXPECT_EQ(max_abs_diff(ps[k].value, want), 0.0) << ps[k].name;  // the same draws, bit for bit
  }
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(ps[2].value.data<float>()[i], 0.0f);
    EXPECT_EQ(ps[3].value.data<float>()[i], 1.0f);
    EXPECT_EQ(ps[4].value.data<int32_t>()[i], 7);
  }

  // The modules' rules: residual projections (GPT-2: c_proj; Llama: o_proj, down_proj), biases zero, gains one.
  ModelConfig l = small_llama();
  TransformerLM llama(l);
  EXPECT_EQ(llama.param("model.layers.0.self_attn.o_proj.weight").init, Init::ResidualNormal);
  EXPECT_EQ(llama.param("model.layers.0.mlp.down_proj.weight").init, Init::ResidualNormal);
  EXPECT_EQ(llama.param("model.layers.0.self_attn.q_proj.weight").init, Init::Normal);
  EXPECT_EQ(llama.param("model.norm.weight").init, Init::Ones);
  EXPECT_EQ(llama.param("model.embed_tokens.weight").init, Init::Normal);
}

TEST(LinearWeight, ForwardAndGradientsMatchNaiveLoops) {
  LinearWeight lw("proj", 3, 5, true);
  lw.weight().value.copy_(random_tensor({3, 5}, 1));
  lw.bias().value.copy_(random_tensor({3}, 2));
  const Tensor x = random_tensor({4, 5}, 3), dy = random_tensor({4, 3}, 4);
  const Tensor y = lw.forward(x), y_nobias = lw.forward(x, false);
  const Tensor dx = lw.input_grad(dy);
  lw.accumulate_grads(dy, x);
  const float *W = lw.weight().value.data<float>(), *b = lw.bias().value.data<float>();
  for (int64_t n = 0; n < 4; ++n)
    for (int64_t o = 0; o < 3; ++o) {
      double s = 0;
      for (int64_t i = 0; i < 5; ++i) s += double(x.data<float>()[n * 5 + i]) * W[o * 5 + i];
      // 5-term f32 dot products: a few ulps of values near 1.
      EXPECT_NEAR(y_nobias.data<float>()[n * 3 + o], s, 1e-5);
      EXPECT_NEAR(y.data<float>()[n * 3 + o], s + b[o], 1e-5);
    }
  for (int64_t n = 0; n < 4; ++n)
    for (int64_t i = 0; i < 5; ++i) {
      double s = 0;
      for (int64_t o = 0; o < 3; ++o) s += double(dy.data<float>()[n * 3 + o]) * W[o * 5 + i];
      EXPECT_NEAR(dx.data<float>()[n * 5 + i], s, 1e-5);
    }
  for (int64_t o = 0; o < 3; ++o) {
    double db = 0;
    for (int64_t n = 0; n < 4; ++n) db += dy.data<float>()[n * 3 + o];
    EXPECT_NEAR(lw.bias().grad.data<float>()[o], db, 1e-5);
    for (int64_t i = 0; i < 5; ++i) {
      double s = 0;
      for (int64_t n = 0; n < 4; ++n) s += double(dy.data<float>()[n * 3 + o]) * x.data<float>()[n * 5 + i];
      EXPECT_NEAR(lw.weight().grad.data<float>()[o * 5 + i], s, 1e-5);
    }
  }
  EXPECT_EQ(max_abs_diff(lw.merged(), lw.weight().value), 0.0);
  LinearWeight tied(lw.weight());
  std::vector<Param*> owned;
  tied.collect_params(owned);
  EXPECT_TRUE(owned.empty());
  EXPECT_EQ(max_abs_diff(tied.forward(x), y_nobias), 0.0);
}

TEST(DenseFloat, MovingParamsLeavesIntegerTensorsAlone) {
  Param packed("layer.qweight", Tensor::full({2, 3}, 5.0, DType::I32), ParamRole::Matrix, Init::Keep);
  Param scales("layer.scales", Tensor::full({2}, 0.25), ParamRole::Vector, Init::Keep);
  scales.keep_dtype = true;
  scales.set_trainable(false);
  Param dense("layer.weight", Tensor::full({2, 3}, 1.5), ParamRole::Matrix);
  EXPECT_FALSE(packed.dense_float());
  EXPECT_FALSE(packed.trainable);
  EXPECT_FALSE(packed.grad.defined());
  EXPECT_FALSE(scales.dense_float());
  EXPECT_TRUE(dense.dense_float());
  EXPECT_NE(error_of([&] { packed.set_trainable(true); }).find("not a dense float"), std::string::npos);
  EXPECT_NE(error_of([&] { scales.set_trainable(true); }).find("cannot train"), std::string::npos);
  const Tensor packed_before = packed.value, scales_before = scales.value;
  move_params({&packed, &scales, &dense}, Device::cpu(), DType::BF16);
  EXPECT_EQ(packed.value.dtype(), DType::I32);
  EXPECT_TRUE(packed.value.same_storage(packed_before));  // untouched: not even copied
  EXPECT_FALSE(packed.master.defined());
  EXPECT_EQ(scales.value.dtype(), DType::F32);
  EXPECT_TRUE(scales.value.same_storage(scales_before));
  EXPECT_EQ(dense.value.dtype(), DType::BF16);  // the dense float weight follows the compute dtype
  EXPECT_TRUE(dense.master.defined());
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(packed.value.data<int32_t>()[i], 5);
}

TEST(MemoryTable, PartsSumToTheClosedFormSizeTable) {
  // The llm.c-style size table written out once more per tensor, for one process.
  for (const char* family : {"gpt2", "llama"}) {
    ModelConfig m = ModelConfig::preset(family);
    m.vocab_size = 37; m.hidden_size = 16; m.num_hidden_layers = 3; m.num_attention_heads = 4;
    m.num_key_value_heads = std::string(family) == "gpt2" ? 4 : 2; m.intermediate_size = 24;
    m.max_position_embeddings = 16;
    TransformerLM model(m);
    const size_t B = 2, T = 9, N = B * T, C = 16, V = 37, I = 24, H = 4, Hkv = m.num_key_value_heads, D = 4, a = 4;
    const size_t norm_stats = std::string(family) == "gpt2" ? 2 * N : N;
    const size_t per_layer = N * C + N * (H + 2 * Hkv) * D + N * H * D + 3 * N * C +
                             (m.gated_mlp() ? 3 : 2) * N * I;
    const size_t per_layer_stats = 2 * norm_stats + N * H;
    const size_t act = N * C + 3 * per_layer + N * C + N * V;
    const size_t stats = 3 * per_layer_stats + norm_stats + 2 * N;
    const MemoryTable t = model.memory_table(B, T);
    EXPECT_EQ(t.activation_bytes, act * a + stats * 4) << family;
    EXPECT_EQ(t.workspace_bytes, N * C * a) << family;
  }
}
