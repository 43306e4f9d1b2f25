// Preemption under mpirun: a signal that reaches one rank only (SIGUSR1 to rank 1, SIGTERM to
// rank 0) stops both ranks after the same step, with a complete checkpoint and exit code 75;
// running the same command again resumes, and the loss trajectory equals an uninterrupted
// run's bit for bit.
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>

#include "tests/ops/ops_support.h"
#include "tests/support/tiny_run.h"
#include "trainer/checkpoint.h"
#include "trainer/exit_codes.h"

using namespace anvil::ops_test;
namespace fs = std::filesystem;

namespace {
const int64_t kSteps = 300;

std::string train_command(const anvil::testing::TinyRun& run) {
  return std::string(kMpiEnv) + " timeout 300 mpirun --oversubscribe --bind-to none -np 2 " ANVIL_BINARY " train " +
         run.config + " --set parallel.dp=2 --set training.micro_batch_size=2 --set training.steps=" +
         std::to_string(kSteps) + " --set run.threads=1 --set logging.every=100 --set training.eval_every=100";
}

// Runs the job, signals rank `rank` with `sig` once 20 steps are logged, and returns the step
// it stopped at (after checking the exit code and the messages).
int64_t interrupt(const anvil::testing::TinyRun& run, int rank, int sig) {
  const std::string metrics = run.dir + "/run/metrics.jsonl";
  Background job(train_command(run), run.dir + "/interrupted.log", run.dir);
  EXPECT_TRUE(wait_until(120, [&] { return step_lines(metrics).size() >= 20; })) << job.output();
  const auto pids = find_processes(run.dir, "OMPI_COMM_WORLD_RANK", std::to_string(rank));
  EXPECT_EQ(pids.size(), 1u) << "rank " << rank << " not found";
  if (pids.size() != 1) return -1;
  kill(pids[0], sig);
  const int rc = job.wait(120);
  const std::string out = job.output();
  EXPECT_EQ(rc, anvil::kExitPreempted) << out;
  EXPECT_EQ(occurrences(out, "preempted ("), 1) << out;
  EXPECT_EQ(occurrences(out, "(exit code 75)"), 1) << out;
  const std::string ckpt = anvil::latest_checkpoint(run.dir + "/run/checkpoints");
  EXPECT_FALSE(ckpt.empty()) << out;
  if (ckpt.empty()) return -1;
  const int64_t step = anvil::read_checkpoint_meta(ckpt).step;
  EXPECT_GE(step, 20);
  EXPECT_LT(step, kSteps) << "the run ended before the signal stopped it";
  // Both ranks stopped after the same step: the metrics end at the checkpoint's step.
  EXPECT_EQ(step_lines(metrics).back().step, step);
  return step;
}
}  // namespace

TEST(Preemption, SignalToOneRankStopsBothAndTheResumedRunIsBitwiseTheUninterruptedOne) {
  const auto straight = anvil::testing::make_tiny_run("preempt_straight");
  const auto split = anvil::testing::make_tiny_run("preempt_split");
  std::string out;
  ASSERT_EQ(anvil::testing::run_command(train_command(straight), out), 0) << out;

  const int64_t stopped = interrupt(split, 1, SIGUSR1);
  ASSERT_GT(stopped, 0);
  ASSERT_EQ(anvil::testing::run_command(train_command(split), out), 0) << out;
  EXPECT_EQ(occurrences(out, "at step " + std::to_string(stopped)), 1) << out;

  const auto a = step_lines(straight.dir + "/run/metrics.jsonl"), b = step_lines(split.dir + "/run/metrics.jsonl");
  ASSERT_EQ(a.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(b.size(), static_cast<size_t>(kSteps));
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(b[i].step, a[i].step);
    EXPECT_EQ(bits(b[i].loss), bits(a[i].loss)) << "step " << a[i].step << ": " << b[i].loss << " vs " << a[i].loss;
    EXPECT_EQ(bits(b[i].grad_norm), bits(a[i].grad_norm)) << "step " << a[i].step;
    EXPECT_EQ(bits(b[i].lr), bits(a[i].lr)) << "step " << a[i].step;
  }
  EXPECT_LT(a.back().loss, a.front().loss - 0.5);  // it trained
}

TEST(Preemption, SigtermToRankZeroAlsoCheckpointsAndTheRunResumes) {
  const auto run = anvil::testing::make_tiny_run("preempt_term");
  const int64_t stopped = interrupt(run, 0, SIGTERM);
  ASSERT_GT(stopped, 0);
  std::string out;
  ASSERT_EQ(anvil::testing::run_command(train_command(run), out), 0) << out;
  EXPECT_EQ(occurrences(out, "resumed from"), 1) << out;
  EXPECT_EQ(anvil::read_checkpoint_meta(anvil::latest_checkpoint(run.dir + "/run/checkpoints")).step, kSteps);
}
