// Training only the LM head under pipeline parallelism (issue 13): `training.trainable:
// ["lm_head.*"]` names a param only the last stage holds, so the patterns are matched over
// the whole model and the other stages train nothing, yet still take part in every
// collective. Under pp2 (2 ranks) and dp2 x pp2 (4 ranks, also with ZeRO-1), with AdamW and
// with Muon (whose force_adamw pattern also names the head only), against the single-process run with the
// same patterns on every rank: (a) it runs, (b) only the head moved, every frozen param is
// bitwise its init, (c) the per-step losses agree within a bound derived below.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/glob.h"
#include "tests/support/adam_drift.h"
#include "tests/support/mpi_world.h"
#include "tests/support/reference.h"
#include "tests/support/tiny_run.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::is_root;
using anvil::testing::world;

namespace {

constexpr int64_t kGlobalMicroBatch = 8;  // sequences per micro-batch over all dp ranks
constexpr int64_t kSeqLen = 32;           // the tiny run's
constexpr int64_t kSteps = 6;
const char* const kHead = "lm_head.weight";

const anvil::testing::TinyRun& tiny() {
  static const anvil::testing::TinyRun run =
      anvil::testing::shared_tiny_run("head_only_np" + std::to_string(world()->size()));
  return run;
}

// An untied 4-layer Llama training only its head; dp x pp ranks, or one process (dp = pp = 1,
// its own directory on every rank).
RunConfig config(const std::string& label, int dp, int pp, const std::string& optimizer, int zero = 0) {
  const bool single = dp * pp == 1;
  const std::string out = tiny().dir + "/out_" + label + (single ? "_rank" + std::to_string(world()->rank()) : "");
  std::vector<std::string> sets = {"run.out_dir=" + out,
                                   "checkpoint.dir=" + out + "/checkpoints",
                                   "checkpoint.resume=none",
                                   "checkpoint.every=0",
                                   "checkpoint.keep=0",
                                   "model.hidden_size=64",
                                   "model.num_hidden_layers=4",
                                   "model.num_attention_heads=8",
                                   "model.num_key_value_heads=4",
                                   "model.intermediate_size=96",
                                   "model.tie_word_embeddings=false",
                                   "training.trainable=[\"lm_head.*\"]",
                                   "optimizer.name=" + optimizer,
                                   "optimizer.eps=1e-5",
                                   "run.threads=1",
                                   "training.steps=" + std::to_string(kSteps),
                                   "training.micro_batch_size=" + std::to_string(kGlobalMicroBatch / dp),
                                   "training.grad_accum_steps=2",
                                   "training.eval_every=0",
                                   "training.sample_every=0",
                                   "parallel.dp=" + std::to_string(dp),
                                   "parallel.pp=" + std::to_string(pp),
                                   "optimizer.zero=" + std::to_string(zero)};
  // Muon's routing must find its force pattern on the last stage only.
  // (adamw_lr_ratio 1: the head steps at the schedule's lr under both.)
  if (optimizer == "muon") {
    sets.push_back("optimizer.force_adamw=[\"lm_head.*\"]");
    sets.push_back("optimizer.adamw_lr_ratio=1");
  }
  return load_run_config(tiny().config, sets);
}

double l1_norm(const Tensor& t) {
  double s = 0;
  for (float v : t.to_vector()) s += std::fabs(double(v));
  return s;
}

// (c)'s tolerance. Both runs compute the frozen body with the same kernels on the same
// weights, so they differ only through the head: its gradient is a sum over the step's
// tokens whose order dp and the micro-batch split change (measured each step: D_s, the max
// |g_pp - g_ref| of the clipped gradients AdamW sees). AdamDrift turns D_1..D_s into a bound
// B_s on max |W_pp - W_ref| after step s (tests/support/adam_drift.h), checked against the
// measured difference. The loss at step s+1 is then off by at most |<G, dW>| <= ||G||_1 B_s
// to first order (G: that step's unclipped head gradient), plus the fp32 evaluation of each
// micro-batch's mean over its 256 tokens in another order: 256 * 2^-24 of the loss.
void expect_head_only_training(int dp, int pp, const std::string& optimizer, int zero = 0) {
  const std::string label =
      "dp" + std::to_string(dp) + "_pp" + std::to_string(pp) + "_" + optimizer + "_zero" + std::to_string(zero);
  ASSERT_EQ(dp * pp, world()->size()) << label;
  const RunConfig cfg = config(label, dp, pp, optimizer, zero);
  Trainer t(cfg, TrainerMode::Quiet, world());                                 // (a): builds on every stage
  Trainer ref(config("single_" + optimizer, 1, 1, optimizer), TrainerMode::Quiet);
  Trainer init(config("init_" + optimizer, 1, 1, optimizer), TrainerMode::Quiet);  // built, never trained
  Param* head = nullptr;
  for (Param* p : t.model().params()) {
    EXPECT_EQ(p->trainable, glob_match("lm_head.*", p->name)) << label << " " << p->name;
    if (p->name == kHead) head = p;
  }
  const AdamWConfig& adam = cfg.optimizer.adamw;  // the head's optimizer under both names (force_adamw)
  anvil::testing::AdamDrift drift(adam.beta1, adam.beta2, adam.eps);
  const int64_t tokens_per_micro_batch = kGlobalMicroBatch * kSeqLen;
  double loss_tolerance = tokens_per_micro_batch * std::ldexp(1.0, -24);  // relative; step 1: evaluation only
  double worst = 0;
  for (int64_t s = 1; s <= kSteps; ++s) {
    t.train(s);
    ref.train(s);
    ASSERT_EQ(t.history().size(), static_cast<size_t>(s)) << label;
    const StepRecord& got = t.history().back();
    const StepRecord& want = ref.history().back();
    const double loss_err = std::fabs(got.loss - want.loss) / std::fabs(want.loss);
    EXPECT_LE(loss_err, loss_tolerance) << label << " step " << s << ": " << got.loss << " vs " << want.loss;
    worst = std::max(worst, loss_err / loss_tolerance);
    // The next step's tolerance, computed where the head lives and shared with every rank.
    double next = 0;
    if (head) {
      const Param& ref_head = ref.model().param(kHead);
      drift.step(want.lr * cfg.optimizer.adamw_lr_ratio, anvil::testing::max_abs_diff(head->grad, ref_head.grad), anvil::testing::max_abs(head->value));
      EXPECT_LE(anvil::testing::max_abs_diff(head->value, ref_head.value), drift.bound()) << label << " step " << s;
      const double clip = cfg.optimizer.grad_clip > 0 && want.grad_norm > cfg.optimizer.grad_clip
                              ? want.grad_norm / cfg.optimizer.grad_clip
                              : 1.0;
      next = l1_norm(ref_head.grad) * clip * drift.bound() / std::fabs(want.loss);
    }
    Tensor shared = Tensor::full({1}, next);
    world()->all_reduce(shared, ReduceOp::Max);
    loss_tolerance = tokens_per_micro_batch * std::ldexp(1.0, -24) + shared.to_vector()[0];
  }
  // (b): only the head changed, and it far beyond the bound.
  for (Param* p : t.model().params()) {
    const double moved = anvil::testing::max_abs_diff(p->value, init.model().param(p->name).value);
    if (p == head) EXPECT_GT(moved, 100 * drift.bound()) << label << " the head did not train";
    else EXPECT_EQ(moved, 0.0) << label << " frozen " << p->name << " changed";
  }
  if (is_root())
    std::printf("[%s] head-only: worst loss difference %.2g of its bound (last bound %.2e relative)\n", label.c_str(),
                worst, loss_tolerance);
}

}  // namespace

TEST(HeadOnlyPipeline, Pp2TrainsTheHeadLikeOneProcess) {
  ASSERT_EQ(world()->size(), 2) << "pp2 is registered at 2 ranks only (tests/CMakeLists.txt)";
  expect_head_only_training(1, 2, "adamw");
  expect_head_only_training(1, 2, "muon");
}

TEST(HeadOnlyPipeline, Dp2Pp2TrainsTheHeadLikeOneProcess) {
  ASSERT_EQ(world()->size(), 4) << "dp2 x pp2 is registered at 4 ranks only (tests/CMakeLists.txt)";
  expect_head_only_training(2, 2, "adamw");
  expect_head_only_training(2, 2, "muon");
  // ZeRO-1: stage 0's sharded AdamW owns nothing and still joins the all-gathers.
  expect_head_only_training(2, 2, "adamw", 1);
}

// The patterns are still checked over the whole model: one that matches no stage is an error
// on every rank (no rank hangs in a collective the others skipped).
TEST(HeadOnlyPipeline, APatternMatchingNoStageIsAnErrorOnEveryRank) {
  RunConfig cfg = config("typo", 1, world()->size(), "adamw");
  cfg.training.trainable = {"lm_haed.*"};
  const std::string msg = anvil::testing::error_of([&] { Trainer t(cfg, TrainerMode::Quiet, world()); });
  EXPECT_NE(msg.find("pattern 'lm_haed.*' matches none of the model's"), std::string::npos) << msg;
}
