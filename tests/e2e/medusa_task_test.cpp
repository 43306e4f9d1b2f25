// task.name: medusa end to end (issue 15, label spec) on a tiny trained base: head targets and
// head weights against hand-built expectations; Medusa-1's first-step loss equals a naive loop
// over plain forwards of the base and the heads, only the heads move (the base stays bitwise its
// checkpoint and has no gradient buffers) and the checkpoint holds the heads alone; Medusa-2's
// warm-up holds the backbone still, lr_multiplier scales the heads' first AdamW step exactly,
// self-distillation starts at zero divergence; bad configs fail before any work, naming the field.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "models/medusa_heads.h"
#include "tests/support/distill_fixture.h"
#include "tests/support/reference.h"
#include "trainer/checkpoint.h"
#include "trainer/load_model.h"
#include "trainer/medusa_task.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing::max_abs_diff;
using anvil::testing::metric;

namespace {

const anvil::testing::TinyRun& tiny() { return anvil::testing::distill_target_run("medusa"); }
std::string base_dir() { return tiny().dir + "/target"; }

RunConfig medusa_config(const std::string& label, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> all = {"run.out_dir=" + tiny().dir + "/" + label, "checkpoint.resume=none",
                                  "task.name=medusa", "model={init_from: " + base_dir() + "}",
                                  "schedule.warmup_steps=0", "training.eval_every=0", "optimizer.weight_decay=0"};
  all.insert(all.end(), extra.begin(), extra.end());
  return load_run_config(tiny().config, all);
}

std::map<std::string, Tensor> snapshot(const std::vector<Param*>& params) {
  std::map<std::string, Tensor> out;
  for (const Param* p : params) out[p->name] = p->value.clone();
  return out;
}

std::vector<int32_t> ints(const Tensor& t) { return {t.data<int32_t>(), t.data<int32_t>() + t.numel()}; }

bool is_head(const std::string& name) { return name.rfind("medusa_head.", 0) == 0; }

// Row-wise cross-entropy of logits z [V] at label y, in double.
double cross_entropy(const float* z, int64_t V, int32_t y) {
  double mx = -INFINITY, sum = 0;
  for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(z[v]));
  for (int64_t v = 0; v < V; ++v) sum += std::exp(z[v] - mx);
  return std::log(sum) + mx - z[y];
}

}  // namespace

TEST(MedusaTask, HeadTargetsShiftAndStopAtDocumentBoundaries) {
  Batch b;
  b.targets = Tensor::from_vector(std::vector<int32_t>{10, 11, 12, 13, 14, 20, 21, 22, 23, 24}, {2, 5});
  const Tensor k0 = medusa_head_targets(b, 0, -100), k2 = medusa_head_targets(b, 2, -100);
  EXPECT_EQ(ints(k0), (std::vector<int32_t>{11, 12, 13, 14, -100, 21, 22, 23, 24, -100}));
  EXPECT_EQ(ints(k2), (std::vector<int32_t>{13, 14, -100, -100, -100, 23, 24, -100, -100, -100}));
  // Documents: row 0 holds documents 0 (positions 0-2) and 1 (3-4); no target crosses the boundary.
  b.segment_ids = Tensor::from_vector(std::vector<int32_t>{0, 0, 0, 1, 1, 5, 5, 5, 5, 5}, {2, 5});
  EXPECT_EQ(ints(medusa_head_targets(b, 0, -1)),
            (std::vector<int32_t>{11, 12, -1, 14, -1, 21, 22, 23, 24, -1}));
  EXPECT_EQ(ints(medusa_head_targets(b, 1, -1)),
            (std::vector<int32_t>{12, -1, -1, -1, -1, 22, 23, 24, -1, -1}));
}

TEST(MedusaTask, HeadWeightsFollowCoefficientDecayAndSchedule) {
  MedusaSection s;
  s.heads_coefficient = 0.2;
  s.decay = 0.8;
  EXPECT_DOUBLE_EQ(medusa_head_weight(s, 0, 0, 100), 0.2);
  EXPECT_NEAR(medusa_head_weight(s, 2, 50, 100), 0.2 * 0.64, 1e-15);
  s.schedule = "linear";
  EXPECT_NEAR(medusa_head_weight(s, 1, 24, 100), 0.2 * 0.8 * 0.25, 1e-15);
  EXPECT_NEAR(medusa_head_weight(s, 1, 500, 100), 0.2 * 0.8, 1e-15);
  s.schedule = "sine";
  s.schedule_steps = 10;
  EXPECT_NEAR(medusa_head_weight(s, 0, 4, 100), 0.2 * std::sin(M_PI / 4), 1e-15);
}

TEST(MedusaTask, Medusa1FirstStepLossMatchesNaiveLoopAndOnlyHeadsTrain) {
  const RunConfig config = medusa_config("m1", {"medusa.num_heads=3", "medusa.heads_coefficient=0.5",
                                                "training.steps=12", "training.grad_accum_steps=2",
                                                "checkpoint.every=0"});
  // The naive first step: the base's hidden states by plain forwards, the heads as the task builds
  // them (run.seed's init, W2 = the base's head), Σ_k w_k Σ_t CE over the LM's target count.
  RunConfig resolved = config;
  resolve_vocab_size(resolved, Tokenizer::load(resolved.tokenizer.path).vocab_size());
  Loader loader(std::make_shared<const TokenStore>(TokenStore::open(resolved.data.train)), loader_config(resolved),
                Split::Train);
  LoadedModel base = load_model(base_dir());
  const ModelConfig& mc = base.model->config();
  MedusaHeads heads(3, 1, mc.hidden_size, mc.vocab_size, nullptr);
  init_params(heads.params(), static_cast<uint64_t>(config.run.seed), float(mc.initializer_range),
              float(mc.initializer_range));
  heads.copy_lm_head(*base.model);
  double objective = 0;
  for (int m = 0; m < 2; ++m) {
    const Batch batch = loader.next();
    Cache c;
    const Tensor h = base.model->forward_hidden(batch.ids, c);
    for (int64_t k = 0; k < 3; ++k) {
      const Tensor z = heads.infer_head(k, h).contiguous();
      const Tensor y = medusa_head_targets(batch, k, -100);
      double sum = 0;
      for (int64_t r = 0; r < y.numel(); ++r)
        if (y.data<int32_t>()[r] != -100) sum += cross_entropy(z.data<float>() + r * mc.vocab_size, mc.vocab_size,
                                                                  y.data<int32_t>()[r]);
      objective += 0.5 * std::pow(0.8, k) * sum / 2;  // each micro-batch's mean is over its own LM targets, / M
    }
  }
  // Each micro-batch's term is Σ / (its LM target count); windows are full, so every count is B * T.
  const double per_mb_tokens = double(config.training.micro_batch_size * config.data.seq_len);
  objective /= per_mb_tokens;

  Trainer t(config, TrainerMode::Quiet);
  const std::map<std::string, Tensor> before = snapshot(t.model().params());
  for (Param* p : t.model().params()) EXPECT_EQ(p->grad.defined(), is_head(p->name)) << p->name;
  t.train();
  const auto& h = t.history();
  ASSERT_EQ(h.size(), 12u);
  EXPECT_NEAR(h[0].loss, objective, 1e-4 * objective);
  EXPECT_LT(metric(h.back(), "head0_loss"), metric(h[0], "head0_loss"));
  for (Param* p : t.model().params()) {
    const bool moved = max_abs_diff(p->value, before.at(p->name)) > 0;
    EXPECT_EQ(moved, is_head(p->name)) << p->name;
  }
  // The checkpoint holds the heads alone: they load; a base param is not there.
  const std::string dir = t.save();
  std::vector<Param*> head_params;
  for (Param* p : t.model().params())
    if (is_head(p->name)) head_params.push_back(p);
  CheckpointContents heads_only;
  heads_only.params = checkpoint_tensors(head_params);
  EXPECT_NO_THROW(load_checkpoint(dir, heads_only));
  CheckpointContents with_base;
  with_base.params = checkpoint_tensors({t.model().params()[0]});
  EXPECT_NE(error_of([&] { load_checkpoint(dir, with_base); }), "(no error)");
}

TEST(MedusaTask, Medusa2WarmupHoldsTheBackboneThenTrainsIt) {
  Trainer t(medusa_config("m2_warm", {"medusa.stage=2", "medusa.warmup_steps=3", "training.steps=5",
                                      "checkpoint.every=0"}),
            TrainerMode::Quiet);
  const std::map<std::string, Tensor> before = snapshot(t.model().params());
  auto moved = [&](bool heads) {
    bool all = true, any = false;
    for (Param* p : t.model().params()) {
      if (is_head(p->name) != heads) continue;
      const bool m = max_abs_diff(p->value, before.at(p->name)) > 0;
      all &= m || p->name.find("linear.bias") != std::string::npos;
      any |= m;
    }
    return heads ? all : any;
  };
  t.train(3);  // the warm-up: heads only
  EXPECT_TRUE(moved(true));
  EXPECT_FALSE(moved(false));
  EXPECT_EQ(t.history().back().task_metrics.size(), 3u + 1);  // head losses and heads_weight
  t.train();  // joint: the backbone moves and its loss is scored
  EXPECT_TRUE(moved(false));
  EXPECT_EQ(t.history().back().task_metrics.size(), 3u + 2);
}

TEST(MedusaTask, LrMultiplierScalesTheHeadsFirstStep) {
  // AdamW's first step moves each element by lr·lr_scale·g/(|g| + eps'): with the same gradient,
  // the heads' step under lr_multiplier 4 is 4 times the one under 1, the backbone's the same.
  std::map<std::string, Tensor> delta[2];
  const double mult[2] = {1.0, 4.0};
  for (int i = 0; i < 2; ++i) {
    Trainer t(medusa_config("m2_lr" + std::to_string(i), {"medusa.stage=2", "training.steps=1", "optimizer.grad_clip=0",
                                                          "medusa.lr_multiplier=" + std::to_string(mult[i])}),
              TrainerMode::Quiet);
    const std::map<std::string, Tensor> before = snapshot(t.model().params());
    t.train();
    for (Param* p : t.model().params()) {
      Tensor d = p->value.clone();
      for (int64_t j = 0; j < d.numel(); ++j) d.data<float>()[j] -= before.at(p->name).data<float>()[j];
      delta[i][p->name] = d;
    }
  }
  for (const auto& [name, d1] : delta[0]) {
    const Tensor& d4 = delta[1].at(name);
    const double ratio = is_head(name) ? 4.0 : 1.0;
    double err = 0, scale = 0;
    for (int64_t j = 0; j < d1.numel(); ++j) {
      err = std::max(err, std::fabs(double(d4.data<float>()[j]) - ratio * d1.data<float>()[j]));
      scale = std::max(scale, double(std::fabs(d4.data<float>()[j])));
    }
    EXPECT_LE(err, 1e-5 * scale + 1e-9) << name;  // f32 rounding of the weights, not of the step
  }
}

TEST(MedusaTask, SelfDistillationStartsAtZeroDivergence) {
  Trainer t(medusa_config("m2_sd", {"medusa.stage=2", "medusa.backbone_loss=self_distill", "training.steps=3"}),
            TrainerMode::Quiet);
  t.train();
  const auto& h = t.history();
  EXPECT_LT(std::fabs(metric(h[0], "backbone_loss")), 1e-6);  // the backbone is the teacher at step 1
  EXPECT_GT(metric(h[2], "backbone_loss"), 1e-7);               // and has moved away by step 3
}

TEST(MedusaTask, BadConfigsFailNamingTheField) {
  EXPECT_NE(error_of([&] { medusa_config("bad1", {"medusa.warmup_steps=5"}); }).find("stage"), std::string::npos);
  const std::string no_base = error_of([&] {
    load_run_config(tiny().config, {"task.name=medusa", "run.out_dir=" + tiny().dir + "/bad2"});
  });
  EXPECT_NE(no_base.find("init_from"), std::string::npos) << no_base;
  EXPECT_NE(error_of([&] { load_run_config(tiny().config, {"medusa.num_heads=4"}); }).find("task.name: medusa"),
            std::string::npos);
  EXPECT_NE(error_of([&] { medusa_config("bad3", {"medusa.stage=3"}); }).find("stage"), std::string::npos);
  EXPECT_NE(error_of([&] { medusa_config("bad4", {"medusa.schedule=cubic"}); }).find("schedule"), std::string::npos);
}
