// task.name: distill with distill.drafter: parallelspec end to end (issue 14, label spec): the
// first step's loss equals the divergence a naive loop computes from plain forwards (the drafter
// over the window for the real tokens and over [x_0..x_t, MASK_1..MASK_k] for each anchor t; the
// target over the window), for forward KL and for ce; the loss falls in a short run; the
// checkpoint reloads with its mask tokens and decodes greedily exactly as the target; bad input
// fails before any work; model.init_from continues from a ParallelSpec checkpoint's mask table.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "data/loader.h"
#include "eval/parallel_spec_drafter.h"
#include "eval/speculative.h"
#include "tests/support/distill_fixture.h"
#include "trainer/load_model.h"
#include "trainer/parallel_spec_rows.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::error_of;

namespace {

const anvil::testing::TinyRun& tiny() { return anvil::testing::distill_target_run("distill_pspec"); }
std::string target_dir() { return tiny().dir + "/target"; }

// A ParallelSpec drafter (1 layer, hidden 16) on the tiny run's windows of 32 tokens; its 64
// positions leave room for 8 anchors of 4 masks (the default: as many as fit).
RunConfig pspec_config(const std::string& label, const std::vector<std::string>& extra = {}) {
  return anvil::testing::distill_run_config(tiny(), label, {"distill.drafter=parallelspec", "model.hidden_size=16",
                                            "model.num_hidden_layers=1", "model.intermediate_size=32",
                                            "training.eval_every=0"}, extra);
}

std::vector<double> softmax(const float* z, int64_t V) {
  double mx = -INFINITY, sum = 0;
  for (int64_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(z[v]));
  std::vector<double> p(V);
  for (int64_t v = 0; v < V; ++v) sum += p[v] = std::exp(z[v] - mx);
  for (double& x : p) x /= sum;
  return p;
}

// forward KL(p || q), or (ce) −log q(label), of one scored slot at temperature 1.
double score(const float* zt, const float* zs, int64_t V, int32_t label, bool ce) {
  const std::vector<double> p = softmax(zt, V), q = softmax(zs, V);
  if (ce) return -std::log(q[label]);
  double kl = 0;
  for (int64_t v = 0; v < V; ++v)
    if (p[v] > 0) kl += p[v] * std::log(p[v] / q[v]);
  return kl;
}

Tensor logits_of(TransformerLM& model, const std::vector<int32_t>& ids) {
  Cache c;
  return model.forward(Tensor::from_vector(ids, {1, static_cast<int64_t>(ids.size())}), c).contiguous().clone();
}

// The first step's loss from plain forwards (no group mask) and a naive loop.
double naive_first_step(const RunConfig& config) {
  anvil::testing::FirstStepInputs in(config);
  const RunConfig& c = in.config;
  Loader& loader = in.loader;
  const int64_t k = c.distill.parallel_tokens, V = c.model.vocab_size;
  TransformerLM drafter(c.model);
  drafter.init_weights(static_cast<uint64_t>(c.run.seed));
  drafter.add_mask_embeddings(k, static_cast<uint64_t>(c.run.seed));
  const LoadedModel& target = in.target;
  const bool ce = c.distill.loss == "ce";
  const int64_t M = c.training.grad_accum_steps;
  double loss = 0;
  for (int64_t m = 0; m < M; ++m) {
    const Batch batch = loader.next();
    const int64_t B = batch.ids.size(0), n = batch.ids.size(1);
    const int64_t a = parallel_spec_anchor_count(n, k, c.distill.anchors_per_sequence, c.model.max_position_embeddings);
    double sum = 0, count = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int32_t* x = batch.ids.data<int32_t>() + b * n;
      const int32_t* y = batch.targets.data<int32_t>() + b * n;
      const std::vector<int32_t> window(x, x + n);
      const Tensor zt = logits_of(*target.model, window), zs = logits_of(drafter, window);
      for (int64_t j = 0; j < n; ++j) {  // the real tokens: plain LM positions
        if (y[j] == c.training.ignore_index) continue;
        sum += score(zt.data<float>() + j * V, zs.data<float>() + j * V, V, y[j], ce), count += 1;
      }
      for (int64_t s = 0; s < a; ++s) {  // anchor t: [x_0..x_t, masks]; mask i drafts y[t + i]
        const int64_t t = parallel_spec_anchor(s, a, n, parallel_spec_offset(x, n));
        std::vector<int32_t> row(x, x + t + 1);
        for (int64_t i = 0; i < k; ++i) row.push_back(drafter.mask_token_id(i));
        const Tensor zm = logits_of(drafter, row);
        for (int64_t i = 1; i <= k && t + i < n; ++i) {
          if (y[t + i] == c.training.ignore_index) continue;
          sum += score(zt.data<float>() + (t + i) * V, zm.data<float>() + (t + i) * V, V, y[t + i], ce), count += 1;
        }
      }
    }
    loss += sum / count / static_cast<double>(M);
  }
  return loss;
}

// Tolerance: the same weights and kernels up to the group mask's different reduction order
// (~1e-6 in the logits); the f32 log-softmax over V = 512 adds ~V·2^-24 ≈ 3e-5 relative.
void expect_first_step_matches(const std::string& label, const std::vector<std::string>& sets) {
  std::vector<std::string> all = {"training.steps=1"};
  all.insert(all.end(), sets.begin(), sets.end());
  const RunConfig config = pspec_config(label, all);
  Trainer t(config, TrainerMode::Quiet);
  t.train();
  const double loss = naive_first_step(config);
  EXPECT_NEAR(t.history()[0].loss, loss, 1e-4 * std::fabs(loss)) << label;
  EXPECT_GT(loss, 0.01) << label;
}

}  // namespace

TEST(DistillParallelSpec, FirstStepLossEqualsANaiveLoopForwardKL) { expect_first_step_matches("naive_fkl", {}); }
TEST(DistillParallelSpec, FirstStepLossEqualsANaiveLoopCe) {
  expect_first_step_matches("naive_ce", {"distill.loss=ce", "distill.anchors_per_sequence=5",
                                         "distill.parallel_tokens=3"});
}

TEST(DistillParallelSpec, TheLossFallsAndTheCheckpointDraftsLosslessly) {
  const RunConfig config = pspec_config("learns", {"training.steps=20"});
  Trainer t(config, TrainerMode::Quiet);
  t.train();
  const auto& h = t.history();
  ASSERT_EQ(h.size(), 20u);
  const double last = (h[17].loss + h[18].loss + h[19].loss) / 3;
  EXPECT_LT(last, 0.8 * h[0].loss) << "first " << h[0].loss << ", last three " << last;
  // The checkpoint reloads as a ParallelSpec drafter (its mask table included) and speculative
  // greedy decoding with it equals the target's own greedy decoding.
  const LoadedModel drafter = load_model(config.run.out_dir);
  ASSERT_EQ(drafter.model->mask_tokens(), 4);
  TransformerLM fresh(drafter.model->config());
  fresh.add_mask_embeddings(4, static_cast<uint64_t>(config.run.seed));
  const Tensor trained = drafter.model->param(kMaskEmbeddingName).value, initial = fresh.param(kMaskEmbeddingName).value;
  double moved = 0;
  for (int64_t i = 0; i < trained.numel(); ++i)
    moved = std::max(moved, static_cast<double>(std::fabs(trained.data<float>()[i] - initial.data<float>()[i])));
  EXPECT_GT(moved, 1e-4) << "the mask table trained and was saved";
  // model.init_from that checkpoint continues from its mask table too (not a fresh one).
  const RunConfig again = load_run_config(
      tiny().config, {"run.out_dir=" + tiny().dir + "/init_from", "checkpoint.resume=none", "task.name=distill",
                      "distill.target=" + target_dir(), "distill.drafter=parallelspec",
                      "model={init_from: " + config.run.out_dir + "}", "training.steps=1", "training.eval_every=0",
                      "schedule.warmup_steps=0"});
  Trainer continued(again, TrainerMode::Quiet);
  const Tensor loaded = continued.model().param(kMaskEmbeddingName).value;
  for (int64_t i = 0; i < trained.numel(); ++i)
    ASSERT_EQ(loaded.data<float>()[i], trained.data<float>()[i]) << "mask table element " << i;
  const LoadedModel target = load_model(target_dir());
  const std::vector<std::vector<int32_t>> prompts = {{5, 6, 7, 8}, {9, 10, 11, 12}, {100, 200, 300, 400}, {1, 2, 3, 4}};
  const auto want = generate(*target.model, prompts, 24, SamplingConfig::greedy());
  for (int gamma : {2, 5}) {
    const std::unique_ptr<Drafter> d = make_model_drafter(*drafter.model);
    const SpeculativeResult got = speculative_generate(*target.model, *d, prompts, 24, SamplingConfig::greedy(), gamma);
    EXPECT_EQ(got.tokens, want) << "gamma " << gamma;
    EXPECT_EQ(got.stats.drafter_calls, got.stats.target_calls);
    std::printf("gamma %d: tau %.3f, acceptance by position:", gamma, got.stats.tau());
    for (int i = 0; i < gamma; ++i) std::printf(" %.3f", got.stats.acceptance_at(i));
    std::printf("\n");
  }
}

TEST(DistillParallelSpec, BadInputFailsBeforeAnyWork) {
  const std::string full = error_of([&] { Trainer t(pspec_config("bad_full", {"data.seq_len=62"})); });
  EXPECT_NE(full.find("not one anchor fits"), std::string::npos) << full;
  const std::string many = error_of([&] { Trainer t(pspec_config("bad_many", {"distill.anchors_per_sequence=9"})); });
  EXPECT_NE(many.find("lower anchors_per_sequence to <= 8"), std::string::npos) << many;
  const std::string zero = error_of([&] { pspec_config("bad_zero", {"distill.parallel_tokens=0"}); });
  EXPECT_NE(zero.find("distill.parallel_tokens"), std::string::npos) << zero;
  const std::string other = error_of([&] { pspec_config("bad_task", {"task.name=lm"}); });
  EXPECT_NE(other.find("is set but task.name is lm"), std::string::npos) << other;
}
