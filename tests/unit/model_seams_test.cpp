// The trunk/head seam of TransformerLM (docs/architecture.md "Seams"): forward_hidden + forward_head is
// forward, their backwards are backward, hidden taps are the layers' outputs, a caller can stop
// the gradient at the hidden state, and a one-stage TransformerStage + CausalLMLoss through the
// PipelineExecutor is plain gradient accumulation.
#include <gtest/gtest.h>

#include <cmath>

#include "models/lm_pipeline.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace {
struct Fixture {
  TransformerLM model;
  Tensor ids, targets;
  explicit Fixture(const ModelConfig& c) : model(c) {
    model.init_weights(3);
    randomize_params(model.params());
    ids = random_ids({2, 12}, static_cast<int32_t>(c.vocab_size), 21);
    targets = random_ids({2, 12}, static_cast<int32_t>(c.vocab_size), 22);
    for (int64_t i = 0; i < targets.numel(); i += 5) targets.data<int32_t>()[i] = -100;
  }
};

std::vector<Tensor> grads(TransformerLM& m) {
  std::vector<Tensor> out;
  for (Param* p : m.params()) out.push_back(p->grad.clone());
  return out;
}
}  // namespace

// The same kernels in the same order: the composed path is bitwise the whole-model one.
TEST(TrunkAndHead, ComposeToTheWholeModelBitwise) {
  for (const ModelCase& k : small_model_cases()) {
    Fixture f(k.config);
    Cache whole;
    const float loss = f.model.forward_loss(f.ids, f.targets, whole);
    f.model.backward_loss(whole);
    const std::vector<Tensor> expected = grads(f.model);

    f.model.zero_grad();
    Cache trunk, head;
    const Tensor hidden = f.model.forward_hidden(f.ids, trunk);
    EXPECT_EQ(hidden.shape(), (Shape{2, 12, k.config.hidden_size})) << k.name;
    const Tensor logits = f.model.forward_head(hidden, head.child(0));
    const CrossEntropyLoss ce = f.model.cross_entropy();
    EXPECT_EQ(ce.forward(logits, f.targets, head), loss) << k.name;
    const Tensor dlogits = ce.backward(head);
    const Tensor dhidden = f.model.backward_head(dlogits, head.child(0));
    f.model.backward_hidden(dhidden, trunk);
    EXPECT_EQ(trunk.bytes(), 0u) << k.name << ": the trunk's backward left activations";
    const std::vector<Param*> params = f.model.params();
    for (size_t i = 0; i < params.size(); ++i)
      EXPECT_EQ(max_abs_diff(params[i]->grad, expected[i]), 0.0) << k.name << " " << params[i]->name;
  }
}

// Taps hold each chosen layer's output: the last one, put through the final norm, is the
// hidden state; an out-of-range layer is refused by name.
TEST(TrunkAndHead, HiddenTapsAreTheLayersOutputs) {
  const ModelConfig c = small_llama(false, 3);
  Fixture f(c);
  Cache cache;
  HiddenTaps taps;
  taps.layers = {2, 0};
  const Tensor hidden = f.model.forward_hidden(f.ids, cache, &taps);
  ASSERT_EQ(taps.states.size(), 2u);
  // Independent: the final RMSNorm of the last layer's output, computed by a naive loop.
  const Tensor last = taps.states[0].contiguous();
  const Tensor w = f.model.param("model.norm.weight").value;
  const int64_t C = c.hidden_size, rows = last.numel() / C;
  Tensor expected = Tensor::empty(last.shape());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < C; ++j) ss += double(last.data<float>()[r * C + j]) * last.data<float>()[r * C + j];
    const double inv = 1.0 / std::sqrt(ss / C + c.norm_eps);
    for (int64_t j = 0; j < C; ++j)
      expected.data<float>()[r * C + j] = static_cast<float>(last.data<float>()[r * C + j] * inv * w.data<float>()[j]);
  }
  EXPECT_LE(max_rel_diff(hidden, expected), 1e-5);
  // Layer 0's tap differs from layer 2's (a tap is not a copy of whatever came last).
  EXPECT_GT(max_abs_diff(taps.states[1], taps.states[0]), 0.0);
  // And layer 0's output is what a one-layer model with the same weights produces.
  ModelConfig one = c;
  one.num_hidden_layers = 1;
  TransformerLM shallow(one);
  for (Param* p : shallow.params()) p->value.copy_(f.model.param(p->name).value);
  Cache c1;
  HiddenTaps first;
  first.layers = {0};
  shallow.forward_hidden(f.ids, c1, &first);
  EXPECT_EQ(max_abs_diff(first.states[0], taps.states[1]), 0.0);

  HiddenTaps bad;
  bad.layers = {3};
  Cache c2;
  try {
    f.model.forward_hidden(f.ids, c2, &bad);
    ADD_FAILURE() << "layer 3 of 3 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 3 does not exist"), std::string::npos) << e.what();
  }
}

// Medusa-1: heads train on a frozen trunk. Stopping at the hidden state leaves every trunk
// gradient untouched and gives the head the same gradient as the full backward.
TEST(TrunkAndHead, StoppingTheGradientAtTheHiddenStateTrainsOnlyTheHead) {
  const ModelConfig c = small_llama(false);
  Fixture f(c);
  Cache whole;
  f.model.forward_loss(f.ids, f.targets, whole);
  f.model.backward_loss(whole);
  const Tensor full_head_grad = f.model.param("lm_head.weight").grad.clone();

  f.model.zero_grad();
  {
    Cache trunk, head;
    const Tensor hidden = f.model.forward_hidden(f.ids, trunk);
    const CrossEntropyLoss ce = f.model.cross_entropy();
    ce.forward(f.model.forward_head(hidden, head.child(0)), f.targets, head);
    f.model.backward_head(ce.backward(head), head.child(0));
    // No backward_hidden: the trunk's Cache is simply dropped.
  }
  EXPECT_EQ(max_abs_diff(f.model.param("lm_head.weight").grad, full_head_grad), 0.0);
  for (Param* p : f.model.params())
    if (p->name != "lm_head.weight") {
      EXPECT_EQ(max_abs_diff(p->grad, Tensor::zeros(p->grad.shape())), 0.0) << p->name << " got a gradient";
    }
}

// One stage: the executor over TransformerStage + CausalLMLoss is gradient accumulation, bit for bit.
TEST(TransformerStage, OneStageExecutorIsGradientAccumulation) {
  for (const ModelCase& k : small_model_cases()) {
    Fixture f(k.config);
    std::vector<LMMicroBatch> micro;
    for (int m = 0; m < 3; ++m)
      micro.push_back({random_ids({2, 8}, static_cast<int32_t>(k.config.vocab_size), 40 + 2 * m),
                       random_ids({2, 8}, static_cast<int32_t>(k.config.vocab_size), 41 + 2 * m), 1.0f / 3, -1});
    double expected = 0;
    std::vector<float> losses;
    for (const LMMicroBatch& mb : micro) {
      Cache c;
      losses.push_back(f.model.forward_loss(mb.ids, mb.targets, c));
      expected += mb.loss_scale * static_cast<double>(losses.back());
      f.model.backward_loss(c, mb.loss_scale);
    }
    const std::vector<Tensor> expected_grads = grads(f.model);
    f.model.zero_grad();
    TransformerStage stage(f.model);
    CausalLMLoss loss(stage, -100);
    std::vector<Tensor> ids;
    for (const LMMicroBatch& mb : micro) ids.push_back(mb.ids);
    stage.set_inputs(ids);
    loss.set_micro_batches(micro);
    PipelineExecutor exec(stage, nullptr, PipeSchedule::OneFOneB);
    const PipelineStepResult r = exec.step(3, loss);
    EXPECT_EQ(r.losses, losses) << k.name;
    EXPECT_EQ(r.loss, expected) << k.name;
    for (int m = 0; m < 3; ++m) EXPECT_EQ(r.weights[m], double(count_loss_tokens(micro[m].targets, -100))) << k.name;
    EXPECT_EQ(stage.saved_bytes(), 0u) << k.name;
    const std::vector<Param*> params = f.model.params();
    for (size_t i = 0; i < params.size(); ++i)
      EXPECT_EQ(max_abs_diff(params[i]->grad, expected_grads[i]), 0.0) << k.name << " " << params[i]->name;
    // Evaluation changes no gradient and reports the same losses.
    const PipelineStepResult e = exec.evaluate(3, loss);
    EXPECT_EQ(e.losses, losses) << k.name;
    for (size_t i = 0; i < params.size(); ++i)
      EXPECT_EQ(max_abs_diff(params[i]->grad, expected_grads[i]), 0.0) << k.name << " " << params[i]->name;
  }
}
