// Layout equivalence of distill.drafter: eagle (issue 14, labels multirank + spec): dp2 and tp2
// (2 ranks) and dp2 x tp2 (4 ranks) runs take the same steps as one process — per-step loss,
// gradient norm, acceptance and tau_sim within fp32 reduction-order noise over 10 steps. Under tp
// the target is sharded like the drafter (block split, embedding and head vocab-parallel, fc /
// input_proj / norms replicated), with an untied head and with a tied one (a tied target); the
// replicated params stay bitwise alike on every rank. The drafter's own params read back from the
// layout's checkpoint (written whole) into a single-process drafter equal the single process's,
// and that drafter decodes as `anvil eval spec` loads it (apps/spec_commands.cpp: its own params
// on a whole target): greedy speculative output equals greedy decoding. sp and pp are refused
// with one error naming both. Tolerances as in distill_layout_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

#include "eval/eagle_chain_drafter.h"
#include "eval/speculative.h"
#include "models/eagle_drafter.h"
#include "tests/support/layout_run.h"
#include "tests/support/mpi_distill_fixture.h"
#include "tests/support/reference.h"
#include "trainer/checkpoint.h"
#include "trainer/load_model.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::Layout;
using anvil::testing::error_of;
using anvil::testing::is_root;
using anvil::testing::metric;
using anvil::testing::rel;
using anvil::testing::world;

namespace {

constexpr int64_t kGlobalMicroBatch = 8;
constexpr int64_t kSteps = 10;

// The tiny run, and its target (the tiny Llama trained 30 steps) written once by rank 0.
const anvil::testing::TinyRun& tiny() {
  static const anvil::testing::TinyRun run =
      anvil::testing::shared_tiny_target_run("eagle_layouts_np" + std::to_string(world()->size()));
  return run;
}

// The target of a tied run: the tiny Llama with tie_word_embeddings, trained 30 steps by rank 0.
const std::string& tied_target() {
  static const std::string dir = [] {
    const std::string d = tiny().dir + "/target_tied";
    if (is_root()) {
      Trainer target(load_run_config(tiny().config, {"run.out_dir=" + d, "model.tie_word_embeddings=true",
                                                     "training.steps=30", "training.eval_every=0",
                                                     "checkpoint.resume=none", "run.threads=1"}),
                     TrainerMode::Quiet);
      target.train();
    }
    world()->barrier();
    return d;
  }();
  return dir;
}

const std::string& target_dir(bool tied) {
  static const std::string untied = tiny().dir + "/target";
  return tied ? tied_target() : untied;
}

// tied: the target (and so the drafter's head) ties its LM head to the embedding.
RunConfig config(const Layout& l, bool tied = false) {
  const std::string out = tiny().dir + "/out_" + l.label() + (tied ? "_tied" : "") +
                          (l.size() > 1 ? "" : "_rank" + std::to_string(world()->rank()));
  std::vector<std::string> sets = anvil::testing::layout_run_settings(l, out, kSteps, kGlobalMicroBatch, 2);
  sets.insert(sets.end(), {"model.tie_word_embeddings=" + std::string(tied ? "true" : "false"),
                           "task.name=distill",
                           "distill.drafter=eagle",
                           "distill.ttt_steps=2",
                           "distill.target=" + target_dir(tied),
                           "distill.temperature=0.8",
                           "optimizer.eps=1e-5"});
  return load_run_config(tiny().config, sets);
}

// The single-process run, once per rank (each in its own directory).
Trainer& reference(bool tied = false) {
  static std::unique_ptr<Trainer> runs[2];
  std::unique_ptr<Trainer>& t = runs[tied];
  if (!t) {
    t = std::make_unique<Trainer>(config(Layout{}, tied), TrainerMode::Quiet);
    t->train();
  }
  return *t;
}

// The layout's checkpoint read as `anvil eval spec` reads it: the drafter's own params onto a
// whole target in this one process. Its params must equal the single process's, and it must
// decode: greedy speculative output equals the target's greedy output (batch 1 and 2).
void expect_checkpoint_decodes(const Layout& l, bool tied, Trainer& ref) {
  const std::string label = l.label() + (tied ? " tied" : "");
  const LoadedModel target = load_model(target_dir(tied));
  EagleDrafter back(*target.model, EagleDrafter::default_layers(target.model->config().num_hidden_layers));
  load_checkpoint(find_checkpoint_dir(config(l, tied).checkpoint.dir), back.own_params(), nullptr);
  double worst_param = 0;
  for (Param* p : back.own_params()) {
    const double e = anvil::testing::max_rel_diff(p->value, ref.model().param(p->name).value);
    worst_param = std::max(worst_param, e);
    EXPECT_LT(e, 1e-5) << label << " " << p->name;
  }
  if (is_root()) std::printf("[eagle %s] max final param deviation %.2e\n", label.c_str(), worst_param);
  const std::vector<std::vector<int32_t>> one = {{1, 5, 9, 2}}, two = {{3, 4, 5, 6}, {7, 8, 9, 10}};
  for (const auto* prompts : {&one, &two}) {
    const auto want = generate(*target.model, *prompts, 12, SamplingConfig::greedy());
    EagleChainDrafter drafter(back);
    const SpeculativeResult got = speculative_generate(*target.model, drafter, *prompts, 12, SamplingConfig::greedy(), 3);
    EXPECT_EQ(got.tokens, want) << label << ": batch " << prompts->size();
  }
}

void expect_same_training(const Layout& l, bool tied = false) {
  ASSERT_EQ(l.size(), world()->size()) << l.label();
  Trainer& ref = reference(tied);
  const std::string label = l.label() + (tied ? " tied" : "");
  Trainer t(config(l, tied), TrainerMode::Quiet, world());
  t.train();
  ASSERT_EQ(t.history().size(), ref.history().size()) << label;
  double worst = 0;
  for (size_t i = 0; i < t.history().size(); ++i) {
    const StepRecord &a = t.history()[i], &b = ref.history()[i];
    // The divergence falls to ~1e-3 of where it started (the tiny target is nearly deterministic),
    // while its per-token terms keep their size: the fp32 noise is relative to the first step's loss.
    const double e = std::fabs(a.loss - b.loss) / std::max(std::fabs(b.loss), ref.history().front().loss);
    worst = std::max(worst, e);
    EXPECT_LT(e, 1e-5) << label << " step " << i + 1 << ": " << a.loss << " vs " << b.loss;
    EXPECT_LT(rel(a.grad_norm, b.grad_norm), 1e-4) << label << " step " << i + 1;
    EXPECT_LT(rel(metric(a, "acceptance"), metric(b, "acceptance")), 1e-5) << label << " step " << i + 1;
    EXPECT_LT(rel(metric(a, "tau_sim"), metric(b, "tau_sim")), 1e-5) << label << " step " << i + 1;
  }
  if (is_root())
    std::printf("[eagle %s] max per-step loss deviation %.2e (of the larger of the loss and the first step's)\n",
                label.c_str(), worst);
  // Replicated params (fc, input_proj, the norms) got the same gradients on every rank, so every
  // rank holds them bitwise alike: the grad norm counts them once and the checkpoint writes one copy.
  for (Param* p : t.model().params()) {
    if (p->shard.sharded() || !p->trainable) continue;
    const Tensor mine = p->value.contiguous();
    Tensor all = Tensor::empty({world()->size() * mine.numel()}, mine.dtype());
    world()->all_gather(mine.view({mine.numel()}), all);
    const float* v = all.data<float>();
    for (int r = 1; r < world()->size(); ++r)
      EXPECT_TRUE(std::equal(v, v + mine.numel(), v + r * mine.numel())) << label << " " << p->name << ": rank " << r;
  }
  expect_checkpoint_decodes(l, tied, ref);
}

}  // namespace

TEST(EagleLayoutEquivalence, EveryLayoutDistillsLikeOneProcess) {
  const std::vector<Layout> all = {{2, 1}, {1, 2}, {2, 2}};
  int ran = 0;
  for (const Layout& l : all)
    if (l.size() == world()->size()) expect_same_training(l), ++ran;
  ASSERT_GT(ran, 0) << "no eagle layout has " << world()->size() << " ranks; run at 2 or 4";
  EXPECT_LT(reference().history().back().loss, reference().history().front().loss);  // it really trained
}

// A tied target: the drafter's head is the tied head on the target's vocab-parallel embedding shard.
TEST(EagleLayoutEquivalence, TiedHeadDistillsLikeOneProcessUnderTp) {
  const std::vector<Layout> all = {{1, 2}, {2, 2}};
  int ran = 0;
  for (const Layout& l : all)
    if (l.size() == world()->size()) expect_same_training(l, true), ++ran;
  ASSERT_GT(ran, 0) << "no tied eagle layout has " << world()->size() << " ranks; run at 2 or 4";
  EXPECT_LT(reference(true).history().back().loss, reference(true).history().front().loss);
}

// sp and pp are not supported for the EAGLE drafter: one clear error before any work.
TEST(EagleLayoutEquivalence, SequenceAndPipelineSplitsAreRefused) {
  const int dp = world()->size() / 2;
  for (const Layout& l : {Layout{dp, 1, 1, 2}, Layout{dp, 1, 2, 1}}) {
    const std::string e = error_of([&] { Trainer t(config(l), TrainerMode::Quiet, world()); });
    EXPECT_NE(e.find("distill.drafter: eagle"), std::string::npos) << l.label() << ": " << e;
    EXPECT_NE(e.find("set parallel.sp and parallel.pp to 1 (dp and tp work)"), std::string::npos)
        << l.label() << ": " << e;
  }
}
