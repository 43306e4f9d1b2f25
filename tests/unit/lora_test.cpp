// LoRA adapters (models/lora.h) on a LinearWeight: forward and both gradients against naive
// loops and finite differences, scaling and rsLoRA, QA-LoRA's pooling (the ALGORITHMS.md §9
// vector), Kaiming-uniform init, the dropout mask's independence of the layout, merged(), and
// the lora.modules matching rule.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "kernels/elementwise.h"
#include "models/linear_weight.h"
#include "models/transformer.h"
#include "tests/support/reference.h"
#include "trainer/lora.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// Naive reference of the adapter: s · B A drop(pool(x)), with the mask drawn straight from Philox
// at (global row) * cols + col, as DropoutKey and models/lora.h document.
struct NaiveLora {
  int64_t out, in, r, g;  // g = 0: no pooling
  float s, p;
  std::vector<float> A, B;  // [r, cols], [out, r]
  int64_t cols() const { return g ? in / g : in; }
  float keep(const DropoutKey& key, const std::string& module, int64_t row, int64_t c) const {
    if (!key.active || p == 0) return 1.0f;
    const PhiloxStream rng(key.seed, stream_id((module + ".lora_B.weight.lora_dropout").c_str()), key.draw);
    return rng.uniform(static_cast<uint64_t>(key.global_row(row) * cols() + c)) >= p ? 1.0f / (1.0f - p) : 0.0f;
  }
  // u = drop(pool(x)) for one row.
  std::vector<double> input(const float* x, const DropoutKey& key, const std::string& module, int64_t row) const {
    std::vector<double> u(cols());
    for (int64_t c = 0; c < cols(); ++c) {
      double v = 0;
      if (g) {
        for (int64_t k = 0; k < g; ++k) v += x[c * g + k];
        v /= g;
      } else {
        v = x[c];
      }
      u[c] = v * keep(key, module, row, c);
    }
    return u;
  }
  std::vector<double> delta(const float* x, const DropoutKey& key, const std::string& module, int64_t row) const {
    const std::vector<double> u = input(x, key, module, row);
    std::vector<double> h(r, 0.0), y(out, 0.0);
    for (int64_t j = 0; j < r; ++j)
      for (int64_t c = 0; c < cols(); ++c) h[j] += A[j * cols() + c] * u[c];
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < r; ++j) y[o] += s * B[o * r + j] * h[j];
    return y;
  }
};

std::vector<float> values(const Tensor& t) {
  const Tensor c = t.contiguous();
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}

DropoutKey training_key(uint32_t draw, int64_t local_len) {
  DropoutKey key;
  key.active = true;
  key.seed = 77;
  key.draw = draw;
  key.local_len = local_len;
  key.seq_len = local_len;
  return key;
}

// A LinearWeight [out, in] with random base weight and random adapter factors (B random too, so
// every product is exercised).
void randomize(LinearWeight& lw, uint32_t stream) {
  lw.weight().value.copy_(random_tensor(lw.weight().value.shape(), stream));
  lw.lora()->A.value.copy_(random_tensor(lw.lora()->A.value.shape(), stream + 1));
  lw.lora()->B.value.copy_(random_tensor(lw.lora()->B.value.shape(), stream + 2));
}

class LoraForwardBackward : public ::testing::TestWithParam<std::tuple<int64_t, float>> {};

TEST_P(LoraForwardBackward, MatchesNaiveLoopsAndFiniteDifferences) {
  const auto [g, p] = GetParam();
  const int64_t out = 5, in = 8, r = 3, rows = 6;
  LoraSpec spec;
  spec.r = r, spec.alpha = 6.0, spec.dropout = p, spec.qa_group = g;
  LinearWeight lw("m.proj", out, in, false);
  lw.attach_lora(spec);
  randomize(lw, 10);
  const DropoutKey key = training_key(3, rows);  // one sequence of `rows` positions
  Tensor x = random_tensor({rows, in}, 20);
  const Tensor dy = random_tensor({rows, out}, 21);
  const NaiveLora ref{out, in, r, g, 2.0f, p, values(lw.lora()->A.value), values(lw.lora()->B.value)};

  // Forward: base + adapter against the naive sum (8-term f32 dots of values below 1).
  const Tensor y = lw.forward(x, true, key);
  const std::vector<float> W = values(lw.weight().value);
  for (int64_t n = 0; n < rows; ++n) {
    const std::vector<double> d = ref.delta(x.data<float>() + n * in, key, "m.proj", n);
    for (int64_t o = 0; o < out; ++o) {
      double base = 0;
      for (int64_t i = 0; i < in; ++i) base += double(x.data<float>()[n * in + i]) * W[o * in + i];
      EXPECT_NEAR(y.data<float>()[n * out + o], base + d[o], 2e-5) << "row " << n << " out " << o;
    }
  }
  // The mask drops something when p > 0 (else this test could not tell a mask from none).
  if (p > 0) {
    const Tensor y_eval = lw.forward(x);
    EXPECT_GT(max_abs_diff(y, y_eval), 1e-3);
  }

  // Gradients against central differences of L = sum(y * dy) (the mask is fixed by the key).
  const Tensor dx = lw.input_grad(dy, key);
  lw.lora()->A.zero_grad();
  lw.lora()->B.zero_grad();
  lw.accumulate_grads(dy, x, key);
  auto loss = [&] { return dot(lw.forward(x, true, key), dy); };
  // f32 forward, eps 1e-3: central differences carry ~1e-7 / 1e-3 relative noise per term.
  EXPECT_LT(max_rel_diff(dx, finite_difference_grad(x, loss)), 2e-3);
  EXPECT_LT(max_rel_diff(lw.lora()->A.grad, finite_difference_grad(lw.lora()->A.value, loss)), 2e-3);
  EXPECT_LT(max_rel_diff(lw.lora()->B.grad, finite_difference_grad(lw.lora()->B.value, loss)), 2e-3);
  // The base is frozen only when told: here it trains, and its gradient is the plain dy^T x.
  EXPECT_TRUE(lw.weight().trainable);
}

INSTANTIATE_TEST_SUITE_P(PlainQaDropout, LoraForwardBackward,
                         ::testing::Values(std::make_tuple(int64_t{0}, 0.0f), std::make_tuple(int64_t{0}, 0.4f),
                                           std::make_tuple(int64_t{2}, 0.0f), std::make_tuple(int64_t{4}, 0.4f)));

TEST(Lora, ScalingAndRsLora) {
  LoraSpec spec;
  spec.r = 16, spec.alpha = 32;
  EXPECT_FLOAT_EQ(spec.scaling(), 2.0f);
  spec.rslora = true;
  EXPECT_FLOAT_EQ(spec.scaling(), 8.0f);  // 32 / sqrt(16)
  // The scaling reaches the output: rsLoRA's delta is sqrt(r) = 4 times plain LoRA's.
  LinearWeight plain("a", 3, 4, false), rs("a", 3, 4, false);
  spec.rslora = false;
  plain.attach_lora(spec);
  spec.rslora = true;
  rs.attach_lora(spec);
  randomize(plain, 40);
  randomize(rs, 40);
  plain.weight().value.zero_();
  rs.weight().value.zero_();
  const Tensor x = random_tensor({2, 4}, 41);
  const Tensor y_plain = plain.forward(x), y_rs = rs.forward(x);
  for (int64_t i = 0; i < y_rs.numel(); ++i)
    EXPECT_NEAR(y_rs.data<float>()[i], 4.0f * y_plain.data<float>()[i], 1e-5);
}

TEST(Lora, QaLoraPublishedVector) {
  // ALGORITHMS.md §9: x = [1, 3, 2, 4], g = 2, A = [[0.5, -1]], B = [[2]], scale 1 -> x̃ = [2, 3], Δy = -4.
  LoraSpec spec;
  spec.r = 1, spec.alpha = 1, spec.qa_group = 2;
  LinearWeight lw("qa", 1, 4, false);  // base weight zero: y is the adapter's alone
  lw.attach_lora(spec);
  lw.lora()->A.value.copy_(Tensor::from_vector(std::vector<float>{0.5f, -1.0f}, {1, 2}));
  lw.lora()->B.value.copy_(Tensor::from_vector(std::vector<float>{2.0f}, {1, 1}));
  const Tensor y = lw.forward(Tensor::from_vector(std::vector<float>{1.0f, 3.0f, 2.0f, 4.0f}, {1, 4}));
  EXPECT_FLOAT_EQ(y.data<float>()[0], -4.0f);
  // Merged, the update is constant within each group: (BA)/g = [0.5, 0.5, -1, -1].
  const Tensor m = lw.merged();
  const std::vector<float> expect = {0.5f, 0.5f, -1.0f, -1.0f};
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(m.data<float>()[i], expect[i]);
}

TEST(Lora, MergedWeightGivesTheAdapterOutput) {
  for (int64_t g : {0, 2}) {
    LoraSpec spec;
    spec.r = 2, spec.alpha = 3, spec.qa_group = g;
    LinearWeight lw("m", 4, 6, true);
    lw.attach_lora(spec);
    randomize(lw, 50);
    lw.bias().value.copy_(random_tensor({4}, 53));
    const Tensor x = random_tensor({3, 6}, 54);
    LinearWeight dense("m", 4, 6, true);
    dense.weight().value.copy_(lw.merged());
    dense.bias().value.copy_(lw.bias().value);
    EXPECT_LT(max_rel_diff(dense.forward(x), lw.forward(x)), 1e-5) << "qa_group " << g;
  }
}

TEST(Lora, InitIsKaimingUniformAndZeroAndLayoutIndependent) {
  LoraSpec spec;
  spec.r = 8;
  const int64_t out = 12, in = 64;
  LinearWeight whole("model.layers.0.mlp.down_proj", out, in, false);
  whole.attach_lora(spec);
  init_params({&whole.lora()->A, &whole.lora()->B}, 5, 0.02f, 0.02f);
  const float bound = 1.0f / std::sqrt(float(in));  // kaiming_uniform_(a=sqrt(5)) on [r, in]
  const std::vector<float> a = values(whole.lora()->A.value);
  double sq = 0;
  for (float v : a) {
    EXPECT_LE(std::fabs(v), bound);
    sq += double(v) * v;
  }
  // Var U(-b, b) = b^2 / 3; 512 draws give the mean square to ~±15% (4 standard errors).
  EXPECT_NEAR(sq / a.size(), bound * bound / 3, 0.15 * bound * bound / 3);
  EXPECT_EQ(max_abs_diff(whole.lora()->B.value, Tensor::zeros({out, 8})), 0.0);
  EXPECT_EQ(whole.lora()->A.name, "model.layers.0.mlp.down_proj.lora_A.weight");
  EXPECT_EQ(whole.lora()->B.name, "model.layers.0.mlp.down_proj.lora_B.weight");
  // A row-parallel shard (in split over 2 ranks): A is split along in and holds its slice of the
  // single-process draw; B follows a column split. Both bounds use the logical fan_in.
  for (int rank = 0; rank < 2; ++rank) {
    LinearWeight row("model.layers.0.mlp.down_proj", out, in / 2, false);
    row.weight().shard = even_shard(Axis::TP, 1, {in}, rank, 2, "w");
    row.attach_lora(spec);
    EXPECT_TRUE(row.lora()->A.shard.sharded());
    EXPECT_FALSE(row.lora()->B.shard.sharded());
    init_params({&row.lora()->A}, 5, 0.02f, 0.02f);
    EXPECT_EQ(max_abs_diff(row.lora()->A.value, take_shard(row.lora()->A, whole.lora()->A.value)), 0.0);
    LinearWeight col("model.layers.0.mlp.down_proj", out / 2, in, false);
    col.weight().shard = even_shard(Axis::TP, 0, {out}, rank, 2, "w");
    col.attach_lora(spec);
    EXPECT_FALSE(col.lora()->A.shard.sharded());
    EXPECT_TRUE(col.lora()->B.shard.sharded());
  }
}

// The dropout mask depends on the logical element only: the output of a row-parallel split (each
// rank's partial sum over its in-slice) and of a dp split (each rank its sequences) equals the
// single-process output with the same key.
TEST(Lora, DropoutMaskIsLayoutIndependent) {
  for (int64_t g : {0, 2}) {
    LoraSpec spec;
    spec.r = 3, spec.alpha = 3, spec.dropout = 0.5, spec.qa_group = g;
    const int64_t out = 4, in = 8, seqs = 2, T = 3, rows = seqs * T;
    LinearWeight whole("m", out, in, false);
    whole.attach_lora(spec);
    randomize(whole, 60);
    whole.weight().value.zero_();  // the adapter's output alone
    const Tensor x = random_tensor({rows, in}, 61);
    DropoutKey key = training_key(9, T);
    const Tensor y = whole.forward(x, true, key);
    // tp: in split over two ranks, partial sums added.
    Tensor sum = Tensor::zeros({rows, out});
    for (int rank = 0; rank < 2; ++rank) {
      LinearWeight part("m", out, in / 2, false);
      part.weight().shard = even_shard(Axis::TP, 1, {in}, rank, 2, "w");
      part.attach_lora(spec);
      part.lora()->A.value.copy_(take_shard(part.lora()->A, whole.lora()->A.value));
      part.lora()->B.value.copy_(whole.lora()->B.value);
      const Tensor x_part = x.slice(1, rank * in / 2, (rank + 1) * in / 2).contiguous();
      const Tensor y_part = part.forward(x_part, true, key);
      for (int64_t i = 0; i < sum.numel(); ++i) sum.data<float>()[i] += y_part.data<float>()[i];
    }
    EXPECT_LT(max_rel_diff(sum, y), 1e-5) << "qa_group " << g;
    // dp: each rank one sequence, placed by first_sample.
    for (int64_t s = 0; s < seqs; ++s) {
      DropoutKey local = key;
      local.first_sample = s;
      const Tensor y_local = whole.forward(x.slice(0, s * T, (s + 1) * T).contiguous(), true, local);
      EXPECT_EQ(max_abs_diff(y_local, y.slice(0, s * T, (s + 1) * T).contiguous()), 0.0) << "qa_group " << g;
    }
    // Another draw gives another mask.
    key.draw = 10;
    EXPECT_GT(max_abs_diff(whole.forward(x, true, key), y), 1e-3);
  }
}

TEST(Lora, ModulePatternsFollowPeft) {
  EXPECT_TRUE(lora_pattern_matches("q_proj", "model.layers.3.self_attn.q_proj"));
  EXPECT_FALSE(lora_pattern_matches("proj", "model.layers.3.self_attn.q_proj"));
  EXPECT_TRUE(lora_pattern_matches("*_proj", "model.layers.3.mlp.up_proj"));
  EXPECT_TRUE(lora_pattern_matches("layers.0.*", "model.layers.0.mlp.up_proj"));
  EXPECT_FALSE(lora_pattern_matches("layers.0.*", "model.layers.10.mlp.up_proj"));
  EXPECT_TRUE(lora_pattern_matches("all-linear", "model.layers.0.mlp.down_proj"));
  EXPECT_FALSE(lora_pattern_matches("all-linear", "lm_head"));
  EXPECT_TRUE(lora_pattern_matches("lm_head", "lm_head"));
}

TEST(Lora, BadShapesAreRefused) {
  LoraSpec spec;
  spec.qa_group = 3;
  LinearWeight lw("m.proj", 4, 8, false);
  EXPECT_NE(error_of([&] { lw.attach_lora(spec); }).find("lora.qa_group 3 does not divide"), std::string::npos);
  spec.qa_group = 0;
  lw.attach_lora(spec);
  EXPECT_NE(error_of([&] { lw.attach_lora(spec); }).find("has a LoRA adapter already"), std::string::npos);
}

}  // namespace

// Through a whole model (attention's q/k/v, the MLP, every backward path): the adapters'
// gradients of the LM loss against central differences, with dropout active.
TEST(Lora, ModelGradientsMatchFiniteDifferences) {
  ModelConfig mc = ModelConfig::llama();
  mc.hidden_size = 16, mc.num_attention_heads = 4, mc.num_key_value_heads = 2, mc.intermediate_size = 24;
  mc.vocab_size = 37, mc.num_hidden_layers = 2, mc.max_position_embeddings = 16;
  TransformerLM model(mc);
  model.init_weights(3);
  std::vector<LinearWeight*> linears;
  model.collect_linears(linears);
  ASSERT_EQ(linears.size(), 2u * 7 + 1);  // q, k, v, o, gate, up, down per layer, and lm_head
  LoraSpec spec;
  spec.r = 2, spec.alpha = 4, spec.dropout = 0.2;
  std::vector<Param*> adapters;
  for (size_t i = 0; i + 1 < linears.size(); ++i) {
    LoraAdapter& a = linears[i]->attach_lora(spec);
    a.A.value.copy_(random_tensor(a.A.value.shape(), 100 + i, -0.5f, 0.5f));
    a.B.value.copy_(random_tensor(a.B.value.shape(), 200 + i, -0.5f, 0.5f));
    adapters.push_back(&a.A), adapters.push_back(&a.B);
  }
  for (Param* p : model.params())
    if (p->name.find(".lora_") == std::string::npos) p->set_trainable(false);
  const Tensor ids = random_ids({2, 6}, 37, 7), targets = random_ids({2, 6}, 37, 8);
  auto context = std::make_shared<StepContext>();
  context->dropout = training_key(4, 6);
  auto loss = [&] {
    Cache c;
    c.set_context(context);
    return double(model.forward_loss(ids, targets, c));
  };
  {
    Cache c;
    c.set_context(context);
    model.forward_loss(ids, targets, c);
    model.backward_loss(c);
  }
  for (Param* p : adapters) {
    const Tensor fd = finite_difference_grad(p->value, loss, 1e-2);
    // f32 loss of O(3.6) differenced over 2e-2: ~1e-5 absolute noise per entry, against gradients of ~1e-2.
    EXPECT_LT(max_abs_diff(p->grad, fd), 2e-4 + 2e-2 * kernels::max_abs(fd)) << p->name;
  }
}
