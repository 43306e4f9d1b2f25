// Layout equivalence of task.name: router, router.kind: drllm (issue 18): dp2, tp2 and pp2 take the
// same steps as one process — per-step loss (the focal objective), gradient norm and the task's
// metrics (router_accuracy, label_layers, router_layers, path_loss, searched) within 1e-5 relative
// over 10 steps, and only the routers train. The backbone is a tiny 4-layer Llama trained 30 steps,
// routers on layers 1 and 2: under pp2 (layers 0-1 | 2-3) each stage holds one, the label search's
// candidate paths run through both stages, and the focal sums reach the last stage by the side channel.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>

#include "tests/support/layout_run.h"
#include "tests/support/mpi_distill_fixture.h"
#include "tests/support/reference.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::Layout;
using anvil::testing::is_root;
using anvil::testing::rel;
using anvil::testing::world;

namespace {

constexpr int64_t kGlobalMicroBatch = 8, kSteps = 10;

// The tiny run and its 4-layer backbone in dir/target, written once by rank 0.
const anvil::testing::TinyRun& tiny() {
  static const anvil::testing::TinyRun run = anvil::testing::shared_tiny_target_run(
      "drllm_layouts_np" + std::to_string(world()->size()), {"model.num_hidden_layers=4"});
  return run;
}

RunConfig config(const Layout& l) {
  const std::string out = tiny().dir + "/out_" + l.label() + (l.size() > 1 ? "" : "_rank" + std::to_string(world()->rank()));
  std::vector<std::string> sets = anvil::testing::layout_run_settings(l, out, kSteps, kGlobalMicroBatch, 2);
  sets.insert(sets.end(), {"task.name=router", "model={init_from: " + tiny().dir + "/target}",
                           "router={kind: drllm, layers: [1, 2], hidden: 16, windows: 4, search_budget: 6}",
                           "optimizer.eps=1e-5", "optimizer.lr=0.05"});
  return load_run_config(tiny().config, sets);
}

std::optional<double> find_metric(const StepRecord& r, const std::string& name) {
  for (const auto& [key, value] : r.task_metrics)
    if (key == name) return value;
  return std::nullopt;
}

void expect_same_training(const Layout& l) {
  ASSERT_EQ(l.size(), world()->size()) << l.label();
  const std::string label = l.label();
  static std::unique_ptr<Trainer> single;
  if (!single) {
    single = std::make_unique<Trainer>(config(Layout{}), TrainerMode::Quiet);
    single->train();
  }
  Trainer t(config(l), TrainerMode::Quiet, world());
  for (Param* p : t.model().params())
    EXPECT_EQ(p->trainable, p->name.find(".router.") != std::string::npos) << label << " " << p->name;
  // Under pp2 each stage holds one router (layers 0-1 | 2-3): the focal sums cross the side channel.
  std::set<std::string> routed;
  for (Param* p : t.model().router_params()) routed.insert(p->name.substr(0, p->name.find(".router.")));
  EXPECT_EQ(routed.size(), l.pp > 1 ? 1u : 2u) << label << ": a stage holds its own layers' routers";
  t.train();
  const auto& a = t.history();
  const auto& b = single->history();
  ASSERT_EQ(a.size(), b.size()) << label;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_LT(rel(a[i].loss, b[i].loss), 1e-5) << label << " step " << i + 1 << ": " << a[i].loss << " vs " << b[i].loss;
    EXPECT_LT(rel(a[i].grad_norm, b[i].grad_norm), 1e-5) << label << " step " << i + 1;
    for (const char* name : {"router_accuracy", "label_layers", "router_layers", "path_loss", "searched"}) {
      const auto x = find_metric(a[i], name), y = find_metric(b[i], name);
      ASSERT_TRUE(x && y) << name;
      EXPECT_LE(std::fabs(*x - *y), 1e-5 * std::max(1.0, std::fabs(*y))) << label << " " << name << " step " << i + 1;
    }
  }
  EXPECT_LT(b.back().loss, b.front().loss) << "the routers trained";
  // The labels are not all "execute" (4 passes): some step's label paths skip or repeat a block.
  bool mixed = false;
  for (const StepRecord& r : b) mixed |= std::fabs(*find_metric(r, "label_layers") - 4.0) > 1e-9;
  EXPECT_TRUE(mixed) << "every label path executes every block: the search found nothing to learn";
  if (is_root())
    std::printf("[%s] focal loss %.5f -> %.5f, label passes per sequence %.3f -> %.3f\n", label.c_str(),
                b.front().loss, b.back().loss, *find_metric(b.front(), "label_layers"),
                *find_metric(b.back(), "label_layers"));
}

}  // namespace

TEST(DrLLMLayout, Dp2MatchesOneProcess) { expect_same_training({2, 1, 1}); }
TEST(DrLLMLayout, Tp2MatchesOneProcess) { expect_same_training({1, 2, 1}); }
TEST(DrLLMLayout, Pp2MatchesOneProcess) { expect_same_training({1, 1, 2}); }
