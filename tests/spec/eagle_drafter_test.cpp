// EagleDrafter (models/eagle_drafter.h; issue 14, drafter kind 3, label spec):
//   - every training-time-test step's output equals a naive reconstruction: fc and input_proj
//     by loops over their weights, the block run on the plain causal sequence the step sees when
//     decoding (the accepted prefix, then its own chain), so the packed drafting-group mask, the
//     positions and the one-step shifts are checked against independent code;
//   - backward_train's gradients of every own param match central finite differences;
//   - the target's embedding and head are shared and frozen, not own params;
//   - out-of-range eagle layers and a split target are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/embedding.h"
#include "models/eagle_drafter.h"
#include "tests/support/small_models.h"

using namespace anvil;

namespace {

Tensor random_ids(int64_t B, int64_t T, int64_t V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(B * T);
  for (auto& id : ids) id = static_cast<int32_t>(rng() % V);
  return Tensor::from_vector(ids, {B, T});
}

// y = W x for one row (W [out, in] PyTorch layout), in double.
std::vector<double> matvec(const Tensor& W, const std::vector<double>& x) {
  const int64_t out = W.size(0), in = W.size(1);
  const float* w = W.data<float>();
  std::vector<double> y(out, 0.0);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) y[o] += static_cast<double>(w[o * in + i]) * x[i];
  return y;
}

std::vector<double> row(const Tensor& t, int64_t b, int64_t pos) {  // t [B, T, h] f32 contiguous
  const int64_t T = t.size(1), h = t.size(2);
  const float* p = t.data<float>() + (b * T + pos) * h;
  return std::vector<double>(p, p + h);
}

// The untied small Llama (biases, GQA) with 4 layers, initialised large enough that every part
// moves the output.
ModelConfig fixture_config() {
  ModelConfig c = anvil::testing::small_llama(false, 4);
  c.initializer_range = 0.2;
  return c;
}

struct Fixture {
  ModelConfig config = fixture_config();
  TransformerLM target{config};
  std::unique_ptr<EagleDrafter> drafter;
  Fixture() {
    target.init_weights(11);
    drafter = std::make_unique<EagleDrafter>(target, EagleDrafter::default_layers(config.num_hidden_layers));
    drafter->init_weights(12);
  }
  std::vector<Tensor> taps(const Tensor& ids) {
    Cache scratch;
    HiddenTaps t;
    t.layers = drafter->layers();
    target.forward_hidden(ids, scratch, &t);
    std::vector<Tensor> out;
    for (const Tensor& s : t.states) out.push_back(s.contiguous());
    return out;
  }
};

}  // namespace

TEST(EagleDrafter, DefaultLayersAndSharedFrozenTargetWeights) {
  EXPECT_EQ(EagleDrafter::default_layers(32), (std::vector<int64_t>{1, 16, 30}));
  EXPECT_EQ(EagleDrafter::default_layers(4), (std::vector<int64_t>{1, 2, 2}));
  Fixture f;
  for (Param* p : f.drafter->own_params()) {
    EXPECT_TRUE(p->name.rfind("eagle.", 0) == 0 || p->name.rfind("model.layers.0.", 0) == 0 || p->name == "model.norm.weight")
        << p->name;
  }
  EXPECT_EQ(f.drafter->own_params().size(), f.drafter->body().params().size() - 2);  // all but embedding and head
  Param& embed = f.drafter->body().param("model.embed_tokens.weight");
  EXPECT_FALSE(embed.trainable);
  EXPECT_EQ(embed.value.data<float>(), f.target.param("model.embed_tokens.weight").value.data<float>());
  EXPECT_EQ(f.drafter->body().param("lm_head.weight").value.data<float>(),
            f.target.param("lm_head.weight").value.data<float>());
}

TEST(EagleDrafter, AGpt2TargetServesToo) {
  // Learned positions, a tied head, LayerNorm: the position table is neither shared nor trained
  // (the target's features carry the positions), and a training step runs.
  ModelConfig config = anvil::testing::small_gpt2(3);
  TransformerLM target(config);
  target.init_weights(3);
  EagleDrafter drafter(target, EagleDrafter::default_layers(3));
  drafter.init_weights(4);
  for (Param* p : drafter.own_params())
    EXPECT_TRUE(p->name.rfind("eagle.", 0) == 0 || p->name.rfind("transformer.h.0.", 0) == 0 ||
                p->name.rfind("transformer.ln_f.", 0) == 0) << p->name;
  EXPECT_FALSE(drafter.body().param("transformer.wpe.weight").trainable);
  const Tensor ids = random_ids(2, 6, config.vocab_size, 1);
  Cache scratch, c;
  HiddenTaps taps;
  taps.layers = drafter.layers();
  target.forward_hidden(ids, scratch, &taps);
  const Tensor y = drafter.forward_train(ids, taps.states, 2, c);
  drafter.backward_train(Tensor::full(y.shape(), 1.0), c);
  double g = 0;
  for (Param* p : drafter.own_params())
    for (int64_t i = 0; i < p->grad.numel(); ++i) g += std::fabs(p->grad.data<float>()[i]);
  EXPECT_GT(g, 0.0);
}

TEST(EagleDrafter, EveryStepEqualsTheNaiveChainItDecodes) {
  Fixture f;
  const int64_t B = 2, T = 7, S = 3, h = f.config.hidden_size;
  const Tensor ids = random_ids(B, T, f.config.vocab_size, 5);
  const std::vector<Tensor> taps = f.taps(ids);
  Cache c;
  const Tensor normed = f.drafter->forward_train(ids, taps, S, c).contiguous();
  ASSERT_EQ(normed.shape(), (Shape{B, S * T, h}));

  TransformerLM& body = f.drafter->body();
  const Tensor& fc = body.param("eagle.fc.weight").value;
  const Tensor& proj = body.param("eagle.input_proj.weight").value;
  const Tensor& table = f.target.param("model.embed_tokens.weight").value;
  const int32_t* x = ids.data<int32_t>();
  // u of (step s, column t) given that entry's feature, naive.
  auto input = [&](int64_t b, int64_t token_pos, const std::vector<double>& feature) {
    std::vector<double> cat(2 * h);
    for (int64_t i = 0; i < h; ++i) cat[i] = table.data<float>()[x[b * T + token_pos] * h + i];
    for (int64_t i = 0; i < h; ++i) cat[h + i] = feature[i];
    return matvec(proj, cat);
  };
  double worst = 0, scale = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + S < T; ++t) {  // columns whose every step is inside the window
      // The plain causal sequence of decoding from anchor t: step-0 entries of columns 0..t, then the chain.
      std::vector<std::vector<double>> seq;
      for (int64_t col = 0; col <= t; ++col) {
        std::vector<double> cat;
        for (const Tensor& tap : taps)
          for (double v : row(tap, b, col)) cat.push_back(v);
        seq.push_back(input(b, col + 1, matvec(fc, cat)));
      }
      for (int64_t s = 0; s < S; ++s) {
        Tensor in = Tensor::empty({1, static_cast<int64_t>(seq.size()), h});
        for (size_t i = 0; i < seq.size(); ++i)
          for (int64_t k = 0; k < h; ++k) in.data<float>()[i * h + k] = static_cast<float>(seq[i][k]);
        Cache scratch;
        const Tensor out = body.forward_blocks(in, scratch).contiguous();
        const Tensor last = out.slice(1, out.size(1) - 1, out.size(1)).contiguous();
        const Tensor expect = body.final_norm().infer(last).contiguous();
        for (int64_t k = 0; k < h; ++k) {
          const double got = normed.data<float>()[(b * S * T + s * T + t) * h + k];
          worst = std::max(worst, std::fabs(got - expect.data<float>()[k]));
          scale = std::max(scale, std::fabs(static_cast<double>(expect.data<float>()[k])));
        }
        // The next step reads this step's pre-norm output and the next token.
        if (s + 1 < S) seq.push_back(input(b, t + 2 + s, row(last, 0, 0)));
      }
    }
  // f32 sums of <= 3h terms through one block: a few ulps of the normed scale, amplified by the norm.
  EXPECT_LT(worst, 1e-4 * std::max(1.0, scale)) << "scale " << scale;
}

TEST(EagleDrafter, GradientsMatchFiniteDifferences) {
  Fixture f;
  const int64_t B = 2, T = 5, S = 3, h = f.config.hidden_size;
  const Tensor ids = random_ids(B, T, f.config.vocab_size, 9);
  const std::vector<Tensor> taps = f.taps(ids);
  // L = Σ r ⊙ normed with fixed random r.
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> r(B * S * T * h);
  for (float& v : r) v = normal(rng);
  const Tensor weights = Tensor::from_vector(r, {B, S * T, h});
  auto loss = [&]() {
    Cache c;
    const Tensor y = f.drafter->forward_train(ids, taps, S, c).contiguous();
    double sum = 0;
    for (int64_t i = 0; i < y.numel(); ++i) sum += static_cast<double>(y.data<float>()[i]) * r[i];
    return sum;
  };
  for (Param* p : f.drafter->own_params()) p->zero_grad();
  {
    Cache c;
    f.drafter->forward_train(ids, taps, S, c);
    f.drafter->backward_train(weights, c);
  }
  std::mt19937 pick(1);
  for (Param* p : f.drafter->own_params()) {
    const int64_t n = p->value.numel();
    double max_grad = 0;
    for (int64_t i = 0; i < n; ++i) max_grad = std::max(max_grad, std::fabs(double(p->grad.data<float>()[i])));
    for (int k = 0; k < 4; ++k) {
      const int64_t i = static_cast<int64_t>(pick() % n);
      float* w = p->value.data<float>() + i;
      const float saved = *w;
      const float eps = 1e-2f * std::max(1.0f, std::fabs(saved));
      *w = saved + eps;
      const double up = loss();
      *w = saved - eps;
      const double down = loss();
      *w = saved;
      const double fd = (up - down) / (2.0 * eps);
      const double analytic = p->grad.data<float>()[i];
      // Central differences in f32: O(eps^2) truncation plus f32 rounding of L / eps.
      EXPECT_NEAR(analytic, fd, 2e-2 * std::max(max_grad, 1e-3) + 1e-3) << p->name << "[" << i << "]";
    }
  }
}

TEST(EagleDrafter, RefusesLayersTheTargetCannotServe) {
  Fixture f;
  try {
    EagleDrafter bad(f.target, {1, 2, 4});
    FAIL() << "layer 4 of a 4-layer target was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("distill.eagle_layers: layer 4 is a drafter kind the target cannot serve"),
              std::string::npos) << e.what();
  }
  EXPECT_THROW(EagleDrafter(f.target, {1, 2}), Error);
}
