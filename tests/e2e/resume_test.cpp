// Exact resume: 20 steps straight equal 10 steps, a stop, and 10 resumed steps,
// loss for loss, bit for bit (params, optimizer state, data position, schedule).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "tests/support/tiny_run.h"
#include "trainer/checkpoint.h"
#include "trainer/trainer.h"

using namespace anvil;

namespace {
uint64_t bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
}  // namespace

TEST(Resume, StopAndResumeIsBitwiseIdentical) {
  const auto straight_run = anvil::testing::make_tiny_run("resume_straight");
  const auto split_run = anvil::testing::make_tiny_run("resume_split");

  Trainer straight(load_run_config(straight_run.config), TrainerMode::Quiet);
  straight.train();
  ASSERT_EQ(straight.history().size(), 20u);

  std::vector<StepRecord> split;
  {
    Trainer first(load_run_config(split_run.config), TrainerMode::Quiet);
    first.train(10);  // stops after step 10 and checkpoints
    split = first.history();
  }
  ASSERT_EQ(split.size(), 10u);
  {
    Trainer second(load_run_config(split_run.config), TrainerMode::Quiet);  // resume: auto
    EXPECT_EQ(second.step(), 10);
    second.train();
    split.insert(split.end(), second.history().begin(), second.history().end());
  }
  ASSERT_EQ(split.size(), 20u);
  for (size_t i = 0; i < 20; ++i) {
    EXPECT_EQ(split[i].step, straight.history()[i].step);
    EXPECT_EQ(bits(split[i].loss), bits(straight.history()[i].loss))
        << "step " << i + 1 << ": " << split[i].loss << " vs " << straight.history()[i].loss;
    EXPECT_EQ(bits(split[i].grad_norm), bits(straight.history()[i].grad_norm)) << "step " << i + 1;
    EXPECT_EQ(bits(split[i].lr), bits(straight.history()[i].lr)) << "step " << i + 1;
  }
  // The loss fell: this is training, not a constant.
  EXPECT_LT(straight.history().back().loss, straight.history().front().loss - 0.5);
}

TEST(Resume, AutoSkipsAnIncompleteCheckpoint) {
  const auto run = anvil::testing::make_tiny_run("resume_incomplete");
  std::string good;
  {
    Trainer t(load_run_config(run.config), TrainerMode::Quiet);
    t.train(5);
    good = latest_checkpoint(t.config().checkpoint.dir);
  }
  ASSERT_FALSE(good.empty());
  // A later checkpoint cut short: the file exists but is truncated.
  const std::filesystem::path bad = std::filesystem::path(good).parent_path() / "step_00000009";
  std::filesystem::create_directories(bad);
  std::filesystem::copy_file(std::filesystem::path(good) / kCheckpointFile, bad / kCheckpointFile);
  std::filesystem::resize_file(bad / kCheckpointFile, 1000);
  EXPECT_EQ(latest_checkpoint(std::filesystem::path(good).parent_path().string()), good);
  Trainer resumed(load_run_config(run.config), TrainerMode::Quiet);
  EXPECT_EQ(resumed.step(), 5);
}

// Each optimizer trains (the loss falls) and resumes bit-exactly from its checkpoint.
TEST(Resume, EveryOptimizerResumesBitwise) {
  // Learning rates that make each visibly learn in 16 steps on the tiny model.
  const std::vector<std::pair<std::string, std::vector<std::string>>> runs = {
      {"muon", {"optimizer.lr=0.02", "optimizer.adamw_lr_ratio=0.15"}},
      {"soap", {"optimizer.lr=0.003"}},
      {"cosmos", {"optimizer.lr=0.003", "optimizer.cosmos_rank=8"}}};
  for (const auto& [name, extra] : runs) {
    SCOPED_TRACE(name);
    std::vector<std::string> set = {"optimizer.name=" + name, "training.steps=16"};
    set.insert(set.end(), extra.begin(), extra.end());
    const auto straight_run = anvil::testing::make_tiny_run(std::string("opt_straight_") + name);
    const auto split_run = anvil::testing::make_tiny_run(std::string("opt_split_") + name);
    Trainer straight(load_run_config(straight_run.config, set), TrainerMode::Quiet);
    straight.train();
    std::vector<StepRecord> split;
    {
      Trainer first(load_run_config(split_run.config, set), TrainerMode::Quiet);
      first.train(8);
      split = first.history();
    }
    Trainer second(load_run_config(split_run.config, set), TrainerMode::Quiet);
    ASSERT_EQ(second.step(), 8);
    second.train();
    split.insert(split.end(), second.history().begin(), second.history().end());
    ASSERT_EQ(split.size(), straight.history().size());
    for (size_t i = 0; i < split.size(); ++i)
      EXPECT_EQ(bits(split[i].loss), bits(straight.history()[i].loss)) << "step " << i + 1;
    EXPECT_LT(straight.history().back().loss, straight.history().front().loss - 0.25);
  }
}
