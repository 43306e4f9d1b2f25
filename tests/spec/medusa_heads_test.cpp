// models/medusa_heads (issue 15): the ResBlock heads against a naive loop in double (forward),
// every gradient against central finite differences (backward), the per-head and stacked calls
// agreeing, Medusa's parameter names and init (W1 zero, b1 within PyTorch's bound, W2 from the
// base's lm_head), and backward_head without the input gradient (Medusa-1's frozen trunk) giving
// the same parameter gradients.
//
// Tolerances: forward is a few f32 dot products of length <= 24 (~1e-6 relative), checked at 1e-5;
// finite differences (eps 1e-3, f32 loss of <= 2 * 3 * 5 * 31 terms) carry ~1e-3 relative noise,
// checked at 2e-2 as the module tests do.
#include <gtest/gtest.h>

#include <cmath>

#include "models/medusa_heads.h"
#include "models/transformer.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr int64_t kHidden = 24, kVocab = 31;

// Head k's logits at every row of h [rows, hidden], in double from the params' values.
std::vector<double> naive_head(MedusaHeads& heads, int64_t k, const Tensor& h) {
  const std::string p = "medusa_head." + std::to_string(k) + ".";
  auto param = [&](const std::string& name) -> const Tensor& {
    for (Param* q : heads.params())
      if (q->name == p + name) return q->value;
    ADD_FAILURE() << "no param " << p + name;
    static Tensor none;
    return none;
  };
  const int64_t rows = h.numel() / kHidden;
  std::vector<double> out(rows * kVocab);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> x(h.data<float>() + r * kHidden, h.data<float>() + (r + 1) * kHidden);
    for (int64_t l = 0; l < heads.layers(); ++l) {
      const Tensor& w = param(std::to_string(l) + ".linear.weight");
      const Tensor& b = param(std::to_string(l) + ".linear.bias");
      std::vector<double> y(kHidden);
      for (int64_t i = 0; i < kHidden; ++i) {
        double pre = b.data<float>()[i];
        for (int64_t j = 0; j < kHidden; ++j) pre += w.data<float>()[i * kHidden + j] * x[j];
        y[i] = x[i] + pre / (1 + std::exp(-pre));
      }
      x = y;
    }
    const Tensor& w2 = param(std::to_string(heads.layers()) + ".weight");
    for (int64_t v = 0; v < kVocab; ++v) {
      double z = 0;
      for (int64_t j = 0; j < kHidden; ++j) z += w2.data<float>()[v * kHidden + j] * x[j];
      out[r * kVocab + v] = z;
    }
  }
  return out;
}

double max_rel(const Tensor& got, const std::vector<double>& want) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::fabs(got.data<float>()[i] - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return err / std::max(scale, 1e-30);
}

}  // namespace

TEST(MedusaHeads, NamesInitAndLmHeadCopy) {
  MedusaHeads heads(3, 2, kHidden, kVocab, nullptr);
  std::vector<std::string> names;
  for (Param* p : heads.params()) names.push_back(p->name);
  ASSERT_EQ(names.size(), 3u * (2 * 2 + 1));
  EXPECT_EQ(names[0], "medusa_head.0.0.linear.weight");
  EXPECT_EQ(names[1], "medusa_head.0.0.linear.bias");
  EXPECT_EQ(names[4], "medusa_head.0.2.weight");
  EXPECT_EQ(names.back(), "medusa_head.2.2.weight");
  init_params(heads.params(), 7, 0.02f, 0.02f);
  const double bound = 1.0 / std::sqrt(static_cast<double>(kHidden));
  for (Param* p : heads.params()) {
    const float* v = p->value.data<float>();
    if (p->name.find(".linear.weight") != std::string::npos)
      for (int64_t i = 0; i < p->value.numel(); ++i) EXPECT_EQ(v[i], 0.0f) << p->name;
    if (p->name.find(".linear.bias") != std::string::npos) {
      double lo = 1, hi = -1;
      for (int64_t i = 0; i < p->value.numel(); ++i) lo = std::min(lo, double(v[i])), hi = std::max(hi, double(v[i]));
      EXPECT_GE(lo, -bound);
      EXPECT_LE(hi, bound);
      EXPECT_GT(hi - lo, bound / 2) << "the bias should be spread over PyTorch's range";
    }
  }
  // copy_lm_head: every W2 becomes the base's (tied) head weight.
  ModelConfig mc = ModelConfig::preset("llama");
  mc.vocab_size = kVocab;
  mc.hidden_size = kHidden;
  mc.num_hidden_layers = 1;
  mc.num_attention_heads = 2;
  mc.num_key_value_heads = 2;
  mc.head_dim = 12;
  mc.intermediate_size = 32;
  mc.max_position_embeddings = 16;
  mc.tie_word_embeddings = true;
  TransformerLM base(mc);
  base.init_weights(3);
  heads.copy_lm_head(base);
  for (Param* p : heads.params())
    if (p->name.find(".2.weight") != std::string::npos && p->name.find("linear") == std::string::npos)
      EXPECT_EQ(max_abs_diff(p->value, base.head_weight().value), 0.0) << p->name;
  MedusaHeads wrong(1, 1, kHidden + 1, kVocab, nullptr);
  EXPECT_NE(error_of([&] { wrong.copy_lm_head(base); }).find("hidden"), std::string::npos);
}

TEST(MedusaHeads, ForwardMatchesNaiveLoop) {
  for (int64_t layers : {0, 1, 2}) {
    SCOPED_TRACE("layers " + std::to_string(layers));
    MedusaHeads heads(3, layers, kHidden, kVocab, nullptr);
    randomize_params(heads.params());
    const Tensor h = random_tensor({2, 5, kHidden}, 11, -2, 2);
    Cache stacked;
    const Tensor all = heads.forward(h, stacked).contiguous();
    ASSERT_EQ(all.shape(), (Shape{2, 5, 3, kVocab}));
    for (int64_t k = 0; k < 3; ++k) {
      const std::vector<double> want = naive_head(heads, k, h);
      Cache c;
      EXPECT_LT(max_rel(heads.forward_head(k, h, c).contiguous(), want), 1e-5) << "head " << k;
      EXPECT_LT(max_rel(heads.infer_head(k, h).contiguous(), want), 1e-5) << "head " << k << " infer";
      EXPECT_LT(max_rel(all.select(2, k).contiguous(), want), 1e-5) << "head " << k << " stacked";
    }
  }
}

TEST(MedusaHeads, BackwardMatchesFiniteDifferences) {
  MedusaHeads heads(2, 2, kHidden, kVocab, nullptr);
  randomize_params(heads.params());
  Tensor h = random_tensor({2, 3, kHidden}, 21, -1, 1);
  const Tensor r = random_tensor({2, 3, 2, kVocab}, 22);
  auto loss = [&] {
    Cache c;
    return dot(heads.forward(h, c), r);
  };
  for (Param* p : heads.params()) p->zero_grad();
  Cache c;
  heads.forward(h, c);
  const Tensor dh = heads.backward(r, c);
  EXPECT_LT(max_rel_diff(dh, finite_difference_grad(h, loss)), 2e-2) << "dh";
  for (Param* p : heads.params()) {
    const Tensor fd = finite_difference_grad(p->value, loss);
    EXPECT_LT(max_rel_diff(p->grad, fd), 2e-2) << p->name;
  }
}

TEST(MedusaHeads, FrozenTrunkBackwardSkipsOnlyTheInputGradient) {
  for (int64_t layers : {0, 1, 2}) {
    MedusaHeads heads(1, layers, kHidden, kVocab, nullptr);
    randomize_params(heads.params());
    const Tensor h = random_tensor({3, 4, kHidden}, 31);
    const Tensor dy = random_tensor({3, 4, kVocab}, 32);
    std::vector<Tensor> with;
    for (bool input_grad : {true, false}) {
      for (Param* p : heads.params()) p->zero_grad();
      Cache c;
      heads.forward_head(0, h, c);
      const Tensor dh = heads.backward_head(0, dy, c, input_grad);
      EXPECT_EQ(dh.defined(), input_grad);
      const std::vector<Param*> params = heads.params();
      for (size_t i = 0; i < params.size(); ++i) {
        if (input_grad) with.push_back(params[i]->grad.clone());
        else EXPECT_EQ(max_abs_diff(params[i]->grad, with[i]), 0.0) << params[i]->name;
      }
    }
  }
}
