// task.name: router, router.kind: drllm end to end on a tiny trained backbone: the label search
// fills the run's label cache, focal-loss training moves only the routers (the backbone stays
// bitwise its checkpoint) and fits the labels better, the checkpoint holds the routers alone,
// and a resume is bitwise and reuses the cached labels (it searches nothing it searched before).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>

#include "tests/support/distill_fixture.h"
#include "tests/support/reference.h"
#include "trainer/checkpoint.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::max_abs_diff;
using anvil::testing::metric;

namespace {

const anvil::testing::TinyRun& tiny() { return anvil::testing::distill_target_run("drllm"); }

RunConfig drllm_config(const std::string& label, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> all = {
      "run.out_dir=" + tiny().dir + "/" + label, "task.name=router",
      "model={init_from: " + tiny().dir + "/target}",
      "router={kind: drllm, layers: [0], hidden: 16, windows: 4, search_budget: 6, focal_gamma: 2.0}",
      "schedule.warmup_steps=0", "training.eval_every=0", "optimizer.weight_decay=0", "optimizer.lr=0.1",
      "training.steps=8", "checkpoint.every=4", "checkpoint.keep=0"};
  all.insert(all.end(), extra.begin(), extra.end());
  return load_run_config(tiny().config, all);
}

bool is_router(const std::string& name) { return name.find(".router.") != std::string::npos; }

uint64_t bits(double v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

}  // namespace

TEST(DrLLMTask, TrainsOnlyTheRoutersOnSearchedLabelsAndResumesBitwise) {
  std::map<std::string, Tensor> before, after;
  std::vector<StepRecord> straight;
  {
    Trainer t(drllm_config("straight", {"checkpoint.resume=none"}), TrainerMode::Quiet);
    for (Param* p : t.model().params()) {
      before[p->name] = p->value.clone();
      EXPECT_EQ(p->grad.defined(), is_router(p->name)) << p->name;  // the backbone costs its weights only
    }
    t.train();
    straight = t.history();
    for (Param* p : t.model().params()) after[p->name] = p->value.clone();
  }
  ASSERT_EQ(straight.size(), 8u);
  for (const auto& [name, value] : before)
    EXPECT_EQ(max_abs_diff(after.at(name), value) > 0, is_router(name)) << name;
  // Every sequence of a step is searched once; the labels are on disk.
  EXPECT_GT(metric(straight[0], "searched"), 0);
  EXPECT_TRUE(std::filesystem::exists(tiny().dir + "/straight/drllm_labels/dp0.bin"));
  // Supervision works: the focal loss falls and the routers agree with the labels at least as well.
  EXPECT_LT(straight.back().loss, 0.7 * straight.front().loss);
  EXPECT_GT(metric(straight.back(), "router_accuracy"), metric(straight.front(), "router_accuracy") + 0.5);
  const double label_layers = metric(straight.back(), "label_layers");
  EXPECT_GE(label_layers, 1.0);
  EXPECT_LE(label_layers, 2.0);  // never more passes than the backbone's 2 layers
  // Split: 8 steps, then the last checkpoint removed and steps 5..8 resumed from step 4's.
  std::vector<StepRecord> split;
  {
    Trainer first(drllm_config("split", {"checkpoint.resume=none"}), TrainerMode::Quiet);
    first.train();
    split = first.history();
    std::filesystem::remove_all(latest_checkpoint(first.config().checkpoint.dir));
  }
  split.resize(4);
  {
    Trainer second(drllm_config("split"), TrainerMode::Quiet);  // resume: auto, from step 4
    ASSERT_EQ(second.step(), 4);
    second.train();
    for (const StepRecord& r : second.history()) {
      EXPECT_EQ(metric(r, "searched"), 0) << "step " << r.step << " searched again";
      split.push_back(r);
    }
  }
  ASSERT_EQ(split.size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(bits(split[i].loss), bits(straight[i].loss)) << "step " << i + 1;
    EXPECT_EQ(bits(split[i].grad_norm), bits(straight[i].grad_norm)) << "step " << i + 1;
  }
  // The checkpoint holds the routers alone.
  const std::string dir = latest_checkpoint(tiny().dir + "/split/checkpoints");
  Trainer probe(drllm_config("probe", {"checkpoint.resume=none", "training.steps=1"}), TrainerMode::Quiet);
  std::vector<Param*> routers, backbone;
  for (Param* p : probe.model().params()) (is_router(p->name) ? routers : backbone).push_back(p);
  CheckpointContents only_routers;
  only_routers.params = checkpoint_tensors(routers);
  EXPECT_NO_THROW(load_checkpoint(dir, only_routers));
  CheckpointContents with_backbone;
  with_backbone.params = checkpoint_tensors({backbone[0]});
  EXPECT_NE(anvil::testing::error_of([&] { load_checkpoint(dir, with_backbone); }), "(no error)");
}
