// Layout equivalence of task.name: router, router.kind: drllm (issue 18): dp2 and tp2 take the same
// steps as one process — per-step loss (the focal objective), gradient norm and the task's
// metrics (router_accuracy, label_layers, path_loss) within 1e-5 relative over 10 steps, the labels
// searched per rank alike, and only the routers train. (pp is refused by the task: DrLLMTask.)
// The backbone is the tiny Llama trained 30 steps (2 layers: one routed layer, 0).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <optional>

#include "tests/support/mpi_distill_fixture.h"
#include "tests/support/reference.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::is_root;
using anvil::testing::rel;
using anvil::testing::world;

namespace {

constexpr int64_t kGlobalMicroBatch = 8, kSteps = 10;

const anvil::testing::TinyRun& tiny() {
  static const anvil::testing::TinyRun run =
      anvil::testing::shared_tiny_target_run("drllm_layouts_np" + std::to_string(world()->size()));
  return run;
}

RunConfig config(int dp, int tp) {
  const bool single = dp * tp == 1;
  const std::string out = tiny().dir + "/out_dp" + std::to_string(dp) + "tp" + std::to_string(tp) +
                          (single ? "_rank" + std::to_string(world()->rank()) : "");
  return load_run_config(tiny().config, {"run.out_dir=" + out, "checkpoint.resume=none", "task.name=router",
                                         "model.init_from=" + tiny().dir + "/target",
                                         "router={kind: drllm, layers: [0], hidden: 16, windows: 4, search_budget: 6}",
                                         "optimizer.eps=1e-5", "optimizer.lr=0.05", "run.threads=1",
                                         "schedule.warmup_steps=0", "training.steps=" + std::to_string(kSteps),
                                         "training.micro_batch_size=" + std::to_string(kGlobalMicroBatch / dp),
                                         "training.grad_accum_steps=2", "training.eval_every=0",
                                         "training.sample_every=0", "checkpoint.every=0",
                                         "parallel.dp=" + std::to_string(dp), "parallel.tp=" + std::to_string(tp)});
}

std::optional<double> find_metric(const StepRecord& r, const std::string& name) {
  for (const auto& [key, value] : r.task_metrics)
    if (key == name) return value;
  return std::nullopt;
}

void expect_same_training(int dp, int tp) {
  const std::string label = "dp" + std::to_string(dp) + "tp" + std::to_string(tp);
  static std::unique_ptr<Trainer> single;
  if (!single) {
    single = std::make_unique<Trainer>(config(1, 1), TrainerMode::Quiet);
    single->train();
  }
  Trainer t(config(dp, tp), TrainerMode::Quiet, world());
  for (Param* p : t.model().params())
    EXPECT_EQ(p->trainable, p->name.find(".router.") != std::string::npos) << label << " " << p->name;
  t.train();
  const auto& a = t.history();
  const auto& b = single->history();
  ASSERT_EQ(a.size(), b.size()) << label;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_LT(rel(a[i].loss, b[i].loss), 1e-5) << label << " step " << i + 1 << ": " << a[i].loss << " vs " << b[i].loss;
    EXPECT_LT(rel(a[i].grad_norm, b[i].grad_norm), 1e-5) << label << " step " << i + 1;
    for (const char* name : {"router_accuracy", "label_layers", "path_loss"}) {
      const auto x = find_metric(a[i], name), y = find_metric(b[i], name);
      ASSERT_TRUE(x && y) << name;
      EXPECT_LE(std::fabs(*x - *y), 1e-5 * std::max(1.0, std::fabs(*y))) << label << " " << name << " step " << i + 1;
    }
  }
  EXPECT_LT(b.back().loss, b.front().loss) << "the routers trained";
  if (is_root()) std::printf("[%s] focal loss %.5f -> %.5f\n", label.c_str(), b.front().loss, b.back().loss);
}

}  // namespace

TEST(DrLLMLayout, Dp2MatchesOneProcess) { expect_same_training(2, 1); }
TEST(DrLLMLayout, Tp2MatchesOneProcess) { expect_same_training(1, 2); }
