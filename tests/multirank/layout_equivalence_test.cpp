// The layout-equivalence invariant (DESIGN.md, issue 4): every process-grid layout of
// {dp, tp, pp, sp} trains the same small Llama to the same per-step losses as one
// process, and ends with the same parameters. Every rank also trains the single-process
// reference locally (no communicator). The distributed run's final parameters are read
// back from its own layout-free checkpoint (each rank wrote its hyperslabs) into a
// single-process model, so the comparison also proves the checkpoint holds full tensors.
// Runs at 2, 4 and 8 ranks; each run takes the layouts whose degrees multiply to the
// world size. Also: the reshard test (save under one layout, resume under others).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "tests/support/layout_run.h"
#include "tests/support/mpi_world.h"
#include "tests/support/reference.h"
#include "tests/support/tiny_run.h"
#include "trainer/load_model.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::Layout;
using anvil::testing::is_root;
using anvil::testing::world;

namespace {

constexpr int64_t kGlobalMicroBatch = 8;  // sequences per micro-batch over all dp ranks
constexpr int64_t kSteps = 10;

const anvil::testing::TinyRun& tiny() {
  static const anvil::testing::TinyRun run =
      anvil::testing::shared_tiny_run("layouts_np" + std::to_string(world()->size()));
  return run;
}

// The tiny run with a model every layout can split: 8 query / 4 KV heads (tp4, sp4 and
// tp2 x sp2 divide them), 4 layers (pp4), vocabulary 512 (tp4). AdamW's eps is 1e-5:
// see data_parallel_test.cpp for why 1e-8 turns fp32 reduction-order noise in cancelling
// gradients into parameter differences that are not the layout's doing.
RunConfig config(const std::string& label, const Layout& l, std::vector<std::string> extra = {}) {
  // A job's ranks share their run directory (heartbeats, checkpoints); single-process runs
  // (on every rank) have their own.
  const std::string out =
      tiny().dir + "/out_" + label + (l.size() > 1 ? "" : "_rank" + std::to_string(world()->rank()));
  // The tiny run's lr warm-up stays: the layouts agree through it too.
  std::vector<std::string> sets =
      anvil::testing::layout_run_settings(l, out, kSteps, kGlobalMicroBatch, 4, /*warmup_steps=*/std::nullopt);
  sets.insert(sets.end(), {"model.hidden_size=64",
                           "model.num_hidden_layers=4",
                           "model.num_attention_heads=8",
                           "model.num_key_value_heads=4",
                           "model.intermediate_size=96",
                           "optimizer.eps=1e-5"});
  sets.insert(sets.end(), extra.begin(), extra.end());
  return load_run_config(tiny().config, sets);
}

double rel(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-30); }

// The single-process reference on this rank (10 steps, trained once).
Trainer& reference() {
  static std::unique_ptr<Trainer> t = [] {
    auto r = std::make_unique<Trainer>(config("reference", Layout{}), TrainerMode::Quiet);
    r->train();
    return r;
  }();
  return *t;
}

void expect_same_training(const Layout& l) {
  ASSERT_EQ(l.size(), world()->size()) << l.label();
  Trainer& ref = reference();
  const std::string label = l.label();
  std::string final_checkpoint;
  {
    Trainer t(config(label, l), TrainerMode::Quiet, world());
    t.train();
    final_checkpoint = config(label, l).checkpoint.dir + "/step_" + std::string(8 - std::to_string(kSteps).size(), '0') +
                       std::to_string(kSteps);
    ASSERT_EQ(t.history().size(), ref.history().size()) << label;
    double worst_loss = 0;
    for (size_t i = 0; i < t.history().size(); ++i) {
      const double e = rel(t.history()[i].loss, ref.history()[i].loss);
      worst_loss = std::max(worst_loss, e);
      EXPECT_LT(e, 1e-5) << label << " step " << i + 1 << ": " << t.history()[i].loss << " vs "
                         << ref.history()[i].loss;
      EXPECT_LT(rel(t.history()[i].grad_norm, ref.history()[i].grad_norm), 1e-4)
          << label << " step " << i + 1 << " grad norm " << t.history()[i].grad_norm << " vs "
          << ref.history()[i].grad_norm;
    }
    // Every rank reads the whole checkpoint the layout wrote collectively, as one process would.
    const LoadedModel back = load_model(final_checkpoint);
    EXPECT_EQ(back.step, kSteps);
    double worst_param = 0;
    for (Param* p : back.model->params()) {
      const double e = anvil::testing::max_rel_diff(p->value, ref.model().param(p->name).value);
      worst_param = std::max(worst_param, e);
      EXPECT_LT(e, 1e-5) << label << " " << p->name;
    }
    if (is_root())
      std::printf("[%s] max per-step loss deviation %.2e, max final param deviation %.2e\n", label.c_str(),
                  worst_loss, worst_param);
  }
}

std::vector<Layout> layouts_of_size(int n) {
  // {dp, tp, pp, sp, zero, pipeline schedule}: the list, and a few more.
  const std::vector<Layout> all = {
      {2, 1, 1, 1, 0},          {4, 1, 1, 1, 1},          {2, 1, 1, 1, 2},          {1, 2, 1, 1, 0},
      {1, 4, 1, 1, 0},          {1, 1, 2, 1, 0, "1f1b"},  {1, 1, 4, 1, 0, "gpipe"}, {1, 1, 1, 2, 0},
      {1, 1, 1, 4, 0},          {2, 2, 1, 1, 0},          {1, 2, 2, 1, 0, "1f1b"},  {2, 2, 2, 1, 0, "1f1b"},
      {2, 2, 1, 2, 0},          {2, 2, 1, 1, 1},          {2, 1, 2, 1, 2, "gpipe"}, {1, 1, 2, 2, 0, "1f1b"},
      {2, 1, 1, 2, 1},
  };
  std::vector<Layout> out;
  for (const Layout& l : all)
    if (l.size() == n) out.push_back(l);
  return out;
}

}  // namespace

TEST(LayoutEquivalence, EveryLayoutTrainsLikeOneProcess) {
  const std::vector<Layout> layouts = layouts_of_size(world()->size());
  ASSERT_FALSE(layouts.empty()) << "no layout has " << world()->size() << " ranks; run at 2, 4 or 8";
  for (const Layout& l : layouts) expect_same_training(l);
  // The reference really trained.
  EXPECT_LT(reference().history().back().loss, reference().history().front().loss - 0.2);
}

// Layout-free checkpoints (issue 4): save under dp4 + ZeRO-1 after 5 steps, resume under
// tp2 x pp2 and under one process; the next steps' losses equal the uninterrupted run's.
TEST(LayoutEquivalence, ACheckpointFromDp4ZeroOneResumesUnderTp2Pp2AndOneProcess) {
  // One size is enough: the 2- and 8-rank runs test the layouts only (tests/CMakeLists.txt).
  ASSERT_EQ(world()->size(), 4) << "dp4 saves and tp2 x pp2 resumes: registered at 4 ranks only";
  Trainer& straight = reference();
  const Layout saver{4, 1, 1, 1, 1};
  std::string saved;
  {
    Trainer first(config("reshard_save", saver), TrainerMode::Quiet, world());
    first.train(5);
    saved = config("reshard_save", saver).checkpoint.dir + "/step_00000005";
  }
  auto expect_continues = [&](const std::string& label, const Layout& l) {
    Trainer next(config(label, l, {"checkpoint.resume=" + saved}), TrainerMode::Quiet,
                 l.size() > 1 ? world() : nullptr);
    ASSERT_EQ(next.step(), 5) << label;
    next.train(7);
    ASSERT_EQ(next.history().size(), 2u) << label;
    for (size_t i = 0; i < 2; ++i) {
      const double e = rel(next.history()[i].loss, straight.history()[5 + i].loss);
      EXPECT_LT(e, 1e-6) << "dp4+ZeRO-1 -> " << label << ", step " << 6 + i << ": " << next.history()[i].loss
                         << " vs " << straight.history()[5 + i].loss;
      if (is_root()) std::printf("[dp4+zero1 -> %s] step %zu loss deviation %.2e\n", label.c_str(), 6 + i, e);
    }
  };
  expect_continues("tp2xpp2", Layout{1, 2, 2, 1, 0, "1f1b"});
  expect_continues("single", Layout{});
}
