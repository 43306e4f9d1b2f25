// Layout equivalence of distill.drafter: eagle (issue 14, labels multirank + spec): a dp2 run
// (2 ranks, half the micro-batch each) takes the same steps as one process — per-step loss,
// gradient norm and acceptance within fp32 reduction-order noise over 10 steps, and the drafter's
// own params read back from the dp2 run's checkpoint. The EAGLE drafter runs whole in each
// process (tp, sp and pp are refused for it), so dp is its one layout. Tolerances as in
// distill_layout_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "models/eagle_drafter.h"
#include "tests/support/mpi_distill_fixture.h"
#include "tests/support/reference.h"
#include "trainer/checkpoint.h"
#include "trainer/load_model.h"
#include "trainer/trainer.h"

using namespace anvil;
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

RunConfig config(int dp) {
  const std::string out = tiny().dir + "/out_dp" + std::to_string(dp) +
                          (dp > 1 ? "" : "_rank" + std::to_string(world()->rank()));
  return load_run_config(tiny().config, {"run.out_dir=" + out,
                                         "checkpoint.dir=" + out + "/checkpoints",
                                         "checkpoint.resume=none",
                                         "task.name=distill",
                                         "distill.drafter=eagle",
                                         "distill.ttt_steps=2",
                                         "distill.target=" + tiny().dir + "/target",
                                         "distill.temperature=0.8",
                                         "optimizer.eps=1e-5",
                                         "run.threads=1",
                                         "schedule.warmup_steps=0",
                                         "training.steps=" + std::to_string(kSteps),
                                         "training.micro_batch_size=" + std::to_string(kGlobalMicroBatch / dp),
                                         "training.grad_accum_steps=2",
                                         "training.eval_every=0",
                                         "checkpoint.every=0",
                                         "checkpoint.keep=0",
                                         "parallel.dp=" + std::to_string(dp)});
}


}  // namespace

TEST(EagleLayoutEquivalence, Dp2DistillsLikeOneProcess) {
  ASSERT_EQ(world()->size(), 2) << "run at 2 ranks";
  Trainer ref(config(1), TrainerMode::Quiet);
  ref.train();
  Trainer t(config(2), TrainerMode::Quiet, world());
  t.train();
  ASSERT_EQ(t.history().size(), ref.history().size());
  double worst = 0;
  for (size_t i = 0; i < t.history().size(); ++i) {
    const StepRecord &a = t.history()[i], &b = ref.history()[i];
    // The divergence falls to ~1e-3 of where it started (the tiny target is nearly deterministic),
    // while its per-token terms keep their size: the fp32 noise is relative to the first step's loss.
    const double e = std::fabs(a.loss - b.loss) / std::max(std::fabs(b.loss), ref.history().front().loss);
    worst = std::max(worst, e);
    EXPECT_LT(e, 1e-5) << "step " << i + 1 << ": " << a.loss << " vs " << b.loss;
    EXPECT_LT(rel(a.grad_norm, b.grad_norm), 1e-4) << "step " << i + 1;
    EXPECT_LT(rel(metric(a, "acceptance"), metric(b, "acceptance")), 1e-5) << "step " << i + 1;
  }
  // The dp2 run's checkpoint holds the drafter's own params, equal to the single process's.
  const LoadedModel target = load_model(tiny().dir + "/target");
  EagleDrafter back(*target.model, EagleDrafter::default_layers(target.model->config().num_hidden_layers));
  load_checkpoint(find_checkpoint_dir(config(2).checkpoint.dir), back.own_params(), nullptr);
  double worst_param = 0;
  for (Param* p : back.own_params()) {
    const double e = anvil::testing::max_rel_diff(p->value, ref.model().param(p->name).value);
    worst_param = std::max(worst_param, e);
    EXPECT_LT(e, 1e-5) << p->name;
  }
  EXPECT_LT(ref.history().back().loss, ref.history().front().loss);  // it really trained
  if (is_root())
    std::printf("[eagle dp2] max per-step loss deviation %.2e (of the larger of the loss and the first step's), max final param deviation %.2e\n", worst, worst_param);
}
