// Layout equivalence of task.name: medusa (issue 15, labels multirank + spec): Medusa-1 (the base
// frozen, trunk forward only), Medusa-2 (joint, heads at lr x 4, 3 heads-only warm-up steps of 10)
// and Medusa-2 with backbone_loss self_distill, under dp2, dp2 + ZeRO-1, tp2, pp2 (2 ranks) and
// dp2 x tp2 (4 ranks), take the same steps as one process: per-step loss, gradient norm and the task's metrics
// (head<k>_loss, backbone_loss), and the final params read back from the layout's own checkpoint
// (stage 1: the heads; stage 2: every param). Tolerances as in layout_equivalence_test.cpp: fp32
// reduction-order noise over 10 steps, AdamW eps 1e-5. Besides: in stage 1 every base param is
// frozen (no gradient buffer) and bitwise the base on every rank; in stage 2 the backbone is
// bitwise the base after the warm-up steps and has moved after the rest.
// The base is the tiny Llama trained 30 steps (hidden 32, 2 layers for pp2, 4 query / 2 KV
// heads and vocabulary 512 for tp2); 3 heads of one ResBlock each.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>

#include "models/medusa_heads.h"
#include "tests/support/layout_run.h"
#include "tests/support/mpi_distill_fixture.h"
#include "tests/support/reference.h"
#include "trainer/checkpoint.h"
#include "trainer/load_model.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::Layout;
using anvil::testing::is_root;
using anvil::testing::rel;
using anvil::testing::world;

namespace {

constexpr int64_t kGlobalMicroBatch = 8;
constexpr int64_t kSteps = 10;
constexpr int64_t kWarmup = 3;  // Medusa-2's heads-only steps
constexpr int64_t kHeads = 3;

// The tiny run, and its base (the tiny Llama trained 30 steps) written once by rank 0.
const anvil::testing::TinyRun& tiny() {
  static const anvil::testing::TinyRun run =
      anvil::testing::shared_tiny_target_run("medusa_layouts_np" + std::to_string(world()->size()));
  return run;
}
std::string base_dir() { return tiny().dir + "/target"; }

struct Variant {
  std::string name;
  int stage = 1;
  std::string backbone_loss = "lm";
};
const Variant kMedusa1{"medusa1", 1};
const Variant kMedusa2{"medusa2", 2};
const Variant kMedusa2SelfDistill{"medusa2_self_distill", 2, "self_distill"};

// Variant v under layout l; what: "run" (trained) or "init" (built, never trained: the base and
// the heads' init under the same split, to compare a run's params with bitwise).
RunConfig config(const Layout& l, const Variant& v, const std::string& what = "run") {
  const std::string out = tiny().dir + "/out_" + v.name + "_" + what + "_" + l.label() +
                          (l.size() > 1 ? "" : "_rank" + std::to_string(world()->rank()));
  std::vector<std::string> sets = anvil::testing::layout_run_settings(l, out, kSteps, kGlobalMicroBatch, 2);
  sets.insert(sets.end(), {"task.name=medusa",
                           "model.init_from=" + base_dir(),
                           "medusa.num_heads=" + std::to_string(kHeads),
                           "medusa.num_layers=1",
                           "medusa.stage=" + std::to_string(v.stage),
                           "medusa.lr_multiplier=4",
                           "medusa.warmup_steps=" + std::to_string(v.stage == 2 ? kWarmup : 0),
                           "medusa.backbone_loss=" + v.backbone_loss,
                           "optimizer.eps=1e-5"});
  return load_run_config(tiny().config, sets);
}

bool is_head(const Param& p) { return p.name.rfind(MedusaHeads::kPrefix, 0) == 0; }

// How far each head param (heads) or base param (!heads) of a run's model lies from the same
// layout's untrained one (same split, so the same shards): max_rel_diff per param, 0 iff bitwise
// alike.
std::vector<double> moved(Trainer& t, Trainer& init, bool heads) {
  std::vector<double> out;
  for (Param* p : t.model().params())
    if (is_head(*p) == heads) out.push_back(anvil::testing::max_rel_diff(p->value, init.model().param(p->name).value));
  return out;
}
// A trained param moved far beyond the layouts' 1e-5 tolerance, so the comparison can fail.
constexpr double kTrained = 1e-3;
bool all_still(const std::vector<double>& m) {
  return std::all_of(m.begin(), m.end(), [](double x) { return x == 0; });
}
bool all_trained(const std::vector<double>& m) {
  return std::all_of(m.begin(), m.end(), [](double x) { return x > kTrained; });
}

// Trains t (l's layout) to the end, checking on the way what the stage promises about the base:
// stage 1: every base param frozen, without a gradient buffer and bitwise the base throughout;
// stage 2: the backbone bitwise the base after the warm-up steps, moved after the rest.
void train_checking_the_base(Trainer& t, const Layout& l, const Variant& v, const std::string& label) {
  Trainer init(config(l, v, "init"), TrainerMode::Quiet, l.size() > 1 ? world() : nullptr);
  int64_t heads = 0;
  for (Param* p : t.model().params()) {
    if (is_head(*p)) {
      ++heads;
      EXPECT_TRUE(p->trainable) << label << " " << p->name;
    } else if (v.stage == 1) {
      EXPECT_FALSE(p->trainable) << label << " " << p->name;
      EXPECT_FALSE(p->grad.defined()) << label << " " << p->name << " holds a gradient buffer";
    }
  }
  // The heads live on the last pipeline stage only: W1, b1, W2 per head.
  EXPECT_EQ(heads, t.model().is_last_stage() ? 3 * kHeads : 0) << label;
  if (v.stage == 2) {
    t.train(kWarmup);
    EXPECT_TRUE(all_still(moved(t, init, false))) << label << ": the backbone moved during the heads-only warm-up";
    EXPECT_TRUE(all_trained(moved(t, init, true))) << label << ": the heads did not train in the warm-up";
  }
  t.train();
  if (v.stage == 1) {
    EXPECT_TRUE(all_still(moved(t, init, false))) << label << ": Medusa-1 moved the frozen base";
    for (Param* p : t.model().params())
      if (!is_head(*p)) EXPECT_FALSE(p->grad.defined()) << label << " " << p->name << " holds a gradient buffer";
  } else {
    EXPECT_TRUE(all_trained(moved(t, init, false))) << label << ": the backbone did not train after the warm-up";
  }
  EXPECT_TRUE(all_trained(moved(t, init, true))) << label << ": not every head param trained";
}

// The single-process run, once per rank (each in its own directory).
Trainer& reference(const Variant& v) {
  static std::map<std::string, std::unique_ptr<Trainer>> runs;
  std::unique_ptr<Trainer>& t = runs[v.name];
  if (!t) {
    t = std::make_unique<Trainer>(config(Layout{}, v), TrainerMode::Quiet);
    train_checking_the_base(*t, Layout{}, v, v.name + " single");
  }
  return *t;
}

std::optional<double> find_metric(const StepRecord& r, const std::string& name) {
  for (const auto& [key, value] : r.task_metrics)
    if (key == name) return value;
  return std::nullopt;
}

// The final params read back from the layout's checkpoint, written whole: stage 1 holds the heads
// (the base reloads from model.init_from), stage 2 everything.
void expect_same_final_params(const Layout& l, const Variant& v, Trainer& ref, const std::string& label) {
  const std::string dir = find_checkpoint_dir(config(l, v).checkpoint.dir);
  const ModelConfig& mc = ref.model().config();
  MedusaHeads heads(kHeads, 1, mc.hidden_size, mc.vocab_size, nullptr);
  const CheckpointMeta meta = load_checkpoint(dir, heads.params(), nullptr);
  EXPECT_EQ(meta.step, kSteps) << label;
  std::vector<Param*> back = heads.params();
  LoadedModel model;
  if (v.stage == 2) {  // load_model attaches a medusa run's heads: its params are the base's and the heads'
    model = load_model(dir);
    ASSERT_TRUE(model.medusa) << label;
    back = model.model->params();
  }
  double worst = 0;
  for (Param* p : back) {
    const double e = anvil::testing::max_rel_diff(p->value, ref.model().param(p->name).value);
    worst = std::max(worst, e);
    EXPECT_LT(e, 1e-5) << label << " " << p->name;
  }
  EXPECT_EQ(back.size(), v.stage == 2 ? ref.model().params().size() : static_cast<size_t>(3 * kHeads)) << label;
  if (is_root()) std::printf("[%s] max final param deviation %.2e over %zu params\n", label.c_str(), worst, back.size());
}

void expect_same_training(const Layout& l, const Variant& v) {
  ASSERT_EQ(l.size(), world()->size()) << l.label();
  Trainer& ref = reference(v);
  const std::string label = v.name + " " + l.label();
  Trainer t(config(l, v), TrainerMode::Quiet, world());
  train_checking_the_base(t, l, v, label);
  ASSERT_EQ(t.history().size(), ref.history().size()) << label;
  double worst_loss = 0, worst_metric = 0, worst_norm = 0;
  for (size_t i = 0; i < t.history().size(); ++i) {
    const StepRecord &a = t.history()[i], &b = ref.history()[i];
    const double e = rel(a.loss, b.loss);
    worst_loss = std::max(worst_loss, e);
    EXPECT_LT(e, 1e-5) << label << " step " << i + 1 << ": " << a.loss << " vs " << b.loss;
    const double g = rel(a.grad_norm, b.grad_norm);
    worst_norm = std::max(worst_norm, g);
    EXPECT_LT(g, 1e-4) << label << " step " << i + 1 << ": grad norm " << a.grad_norm << " vs " << b.grad_norm;
    std::vector<std::string> names = {"backbone_loss", "heads_weight"};
    for (int64_t k = 0; k < kHeads; ++k) names.push_back("head" + std::to_string(k) + "_loss");
    for (const std::string& name : names) {
      const std::optional<double> x = find_metric(a, name), y = find_metric(b, name);
      ASSERT_EQ(x.has_value(), y.has_value()) << label << " step " << i + 1 << ": " << name;
      if (!y) continue;
      // A self-distilled backbone starts at KL 0 (the base is the teacher); its per-token terms
      // are cross-entropy sized, so its fp32 noise is relative to the step's loss.
      const bool kl = name == "backbone_loss" && v.backbone_loss == "self_distill";
      const double m = std::fabs(*x - *y) / std::max(std::fabs(*y), kl ? std::fabs(b.loss) : 1e-30);
      worst_metric = std::max(worst_metric, m);
      EXPECT_LT(m, 1e-5) << label << " step " << i + 1 << ": " << name << " " << *x << " vs " << *y;
    }
    // The backbone term is scored exactly when the backbone trains: stage 2 after the warm-up.
    EXPECT_EQ(find_metric(b, "backbone_loss").has_value(), v.stage == 2 && int64_t(i) >= kWarmup) << label;
  }
  if (is_root())
    std::printf("[%s] max per-step deviation: loss %.2e, grad norm %.2e, task metrics %.2e\n", label.c_str(),
                worst_loss, worst_norm, worst_metric);
  expect_same_final_params(l, v, ref, label);
}

void every_layout(const Variant& v) {
  const std::vector<Layout> all = {{2, 1, 1}, {2, 1, 1, 1, 1}, {1, 2, 1}, {1, 1, 2}, {2, 2, 1}};
  int ran = 0;
  for (const Layout& l : all)
    if (l.size() == world()->size()) expect_same_training(l, v), ++ran;
  ASSERT_GT(ran, 0) << "no medusa layout has " << world()->size() << " ranks; run at 2 or 4";
}

}  // namespace

TEST(MedusaLayoutEquivalence, Medusa1TrainsLikeOneProcess) { every_layout(kMedusa1); }

TEST(MedusaLayoutEquivalence, Medusa2TrainsLikeOneProcess) { every_layout(kMedusa2); }

TEST(MedusaLayoutEquivalence, Medusa2SelfDistillTrainsLikeOneProcess) { every_layout(kMedusa2SelfDistill); }
