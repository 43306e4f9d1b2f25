// Every module's backward against central finite differences of a scalar loss
// L = sum(forward(x) * r) with a fixed random cotangent r.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/rng.h"
#include "models/transformer.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// f32 forward, double loss: with eps = 1e-2 the finite-difference error is
// O(eps^2) from curvature plus ~1e-6 * |L| / eps from rounding, so 2e-2 of the
// gradient's max magnitude is a safe bound that still catches wrong formulas.
constexpr double kEps = 1e-2;
constexpr double kTol = 2e-2;

// Compares analytic and numeric gradients on at most `samples` elements of x.
void expect_grad_close(Tensor& x, const Tensor& analytic, const std::function<double()>& loss,
                       const std::string& what, int samples = 48, double eps = kEps) {
  ASSERT_TRUE(analytic.defined()) << what << ": no gradient";
  const int64_t n = x.numel();
  const int64_t step = std::max<int64_t>(1, n / samples);
  float* p = x.data<float>();
  double max_ref = 0, max_err = 0;
  for (int64_t i = 0; i < n; i += step) {
    const float saved = p[i];
    p[i] = static_cast<float>(saved + eps);
    const double up = loss();
    p[i] = static_cast<float>(saved - eps);
    const double down = loss();
    p[i] = saved;
    const double numeric = (up - down) / (2 * eps);
    max_ref = std::max(max_ref, std::fabs(numeric));
    max_err = std::max(max_err, std::fabs(numeric - analytic.data<float>()[i]));
  }
  ASSERT_GT(max_ref, 0) << what << ": numeric gradient is identically zero";
  EXPECT_LE(max_err / max_ref, kTol) << what << ": max err " << max_err << " vs max |grad| " << max_ref;
}

// Runs forward+backward once and checks dx (for float inputs) and every trainable param.
void check_module(Module& m, Tensor x, const std::string& what) {
  for (Param* p : m.params()) {
    const bool is_norm_gain = p->role == ParamRole::Vector && p->name.find("bias") == std::string::npos;
    p->value.copy_(random_tensor(p->value.shape(), stream_id(p->name.c_str()), is_norm_gain ? 0.5f : -0.5f,
                                 is_norm_gain ? 1.5f : 0.5f));
    p->zero_grad();
  }
  Cache probe;
  const Tensor y0 = m.forward(x, probe);
  probe.clear();
  const Tensor r = random_tensor(y0.shape(), 99);
  auto loss = [&]() {
    Cache c;
    return dot(m.forward(x, c), r);
  };
  Cache c;
  m.forward(x, c);
  const Tensor dx = m.backward(r, c);
  if (x.dtype() == DType::F32) expect_grad_close(x, dx, loss, what + " dx");
  for (Param* p : m.params())
    if (p->trainable) expect_grad_close(p->value, p->grad, loss, what + " " + p->name);
}

}  // namespace

TEST(ModuleGrad, LinearWithAndWithoutBias) {
  Linear with_bias("fc", 13, 7, true);
  check_module(with_bias, random_tensor({2, 5, 13}, 1), "linear+bias");
  Linear no_bias("fc", 9, 11, false);
  check_module(no_bias, random_tensor({1, 1, 9}, 2), "linear");
}

TEST(ModuleGrad, Embedding) {
  Embedding e("wte", 17, 6);
  Tensor ids = Tensor::from_vector(std::vector<int32_t>{3, 16, 0, 3, 3, 9}, {2, 3});
  check_module(e, ids, "embedding");
}

TEST(ModuleGrad, Norms) {
  LayerNorm ln("ln", 19, 1e-5);
  check_module(ln, random_tensor({3, 4, 19}, 3), "layernorm");
  RMSNorm rms("rms", 19, 1e-6);
  check_module(rms, random_tensor({3, 4, 19}, 4), "rmsnorm");
}

TEST(ModuleGrad, AttentionFusedWithBias) {
  Attention a("attn", {24, 4, 4, 6, true}, Attention::Projection::Fused, nullptr);
  check_module(a, random_tensor({2, 9, 24}, 5), "attention gpt2");
}

TEST(ModuleGrad, AttentionGqaWithRope) {
  for (int64_t kv : {1, 2, 4}) {
    Attention a("self_attn", {32, 4, kv, 8, false}, Attention::Projection::Separate,
                make_rope_tables(8, 16, 10000.0));
    check_module(a, random_tensor({2, 11, 32}, 6), "attention llama kv=" + std::to_string(kv));
  }
}

TEST(ModuleGrad, MlpGeluAndSwiglu) {
  MLP gelu("mlp", 12, 29, false, true);
  check_module(gelu, random_tensor({2, 5, 12}, 7), "gelu mlp");
  MLP swiglu("mlp", 12, 29, true, false);
  check_module(swiglu, random_tensor({2, 5, 12}, 8), "swiglu mlp");
}

TEST(ModuleGrad, TransformerBlocks) {
  ModelConfig g = ModelConfig::gpt2();
  g.hidden_size = 16; g.num_attention_heads = g.num_key_value_heads = 2; g.intermediate_size = 40;
  TransformerBlock gb("transformer.h.0", g, nullptr);
  check_module(gb, random_tensor({2, 7, 16}, 9), "gpt2 block");
  ModelConfig l = ModelConfig::llama();
  l.hidden_size = 16; l.num_attention_heads = 4; l.num_key_value_heads = 2; l.intermediate_size = 24;
  TransformerBlock lb("model.layers.0", l, make_rope_tables(4, 16, 10000.0));
  check_module(lb, random_tensor({2, 7, 16}, 10), "llama block");
}

TEST(ModuleGrad, WholeModelsThroughTheLoss) {
  // qwen2: q/k/v biases; mistral: a window of 3 on 9 positions, with llama3 rope scaling.
  for (const char* family : {"gpt2", "llama", "qwen2", "mistral"}) {
    ModelConfig c = ModelConfig::preset(family);
    c.vocab_size = 37; c.hidden_size = 16; c.num_hidden_layers = 2;
    c.num_attention_heads = 4; c.num_key_value_heads = std::string(family) == "gpt2" ? 4 : 2;
    c.intermediate_size = 24; c.max_position_embeddings = 16; c.initializer_range = 0.3;
    if (std::string(family) == "mistral") {
      c.sliding_window = 3;
      c.rope_scaling.type = "llama3";
      c.rope_scaling.original_max_position_embeddings = 8;
    }
    TransformerLM model(c);
    model.init_weights(3);
    Tensor ids = random_ids({2, 9}, 37, 21), targets = random_ids({2, 9}, 37, 22);
    targets.data<int32_t>()[4] = -100;
    auto loss = [&]() { Cache k; return static_cast<double>(model.forward_loss(ids, targets, k)); };
    Cache cache;
    model.forward_loss(ids, targets, cache);
    model.backward_loss(cache);
    // The mean loss is O(1) but strongly curved in the embeddings: a smaller step keeps
    // the O(eps^2) term well under the tolerance while f32 rounding (~1e-7/eps) stays small.
    for (Param* p : model.params())
      expect_grad_close(p->value, p->grad, loss, std::string(family) + " " + p->name, 16, 1e-3);
  }
}

TEST(ModuleGrad, FrozenParamsHaveNoGradientAndLeaveOthersUnchanged) {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 41; c.hidden_size = 16; c.num_hidden_layers = 2; c.num_attention_heads = 4;
  c.num_key_value_heads = 2; c.intermediate_size = 24; c.max_position_embeddings = 16;
  TransformerLM model(c);
  model.init_weights(5);
  Tensor ids = random_ids({2, 8}, 41, 31), targets = random_ids({2, 8}, 41, 32);
  Cache cache;
  model.forward_loss(ids, targets, cache);
  model.backward_loss(cache);
  std::vector<Tensor> reference;
  for (Param* p : model.params()) reference.push_back(p->grad.clone());

  const size_t before = cpu_allocator().stats().current_bytes;
  Param& frozen = model.param("model.layers.0.mlp.down_proj.weight");
  frozen.set_trainable(false);
  EXPECT_FALSE(frozen.grad.defined());
  EXPECT_EQ(cpu_allocator().stats().current_bytes, before - frozen.value.nbytes());
  model.zero_grad();
  model.forward_loss(ids, targets, cache);
  model.backward_loss(cache);
  const auto params = model.params();
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i] == &frozen) continue;
    EXPECT_EQ(max_abs_diff(params[i]->grad, reference[i]), 0.0) << params[i]->name;
  }
}
