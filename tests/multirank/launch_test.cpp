// `anvil train` under mpirun: a bad launch (degrees that do not multiply to the
// process count, or an axis not built yet) fails promptly on every rank with one
// message and a non-zero exit; a good dp=2 launch trains and only rank 0 prints.
// This binary is not itself run under mpirun: it starts mpirun.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>

#include "tests/support/tiny_run.h"

using anvil::testing::run_command;

namespace {
int occurrences(const std::string& text, const std::string& part) {
  int n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}
// The launch as CI runs it: as root, one OpenMP thread per rank, shared memory transport.
std::string mpirun(int ranks, const std::string& args) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMPI_MCA_btl=self,vader "
         "timeout 60 mpirun --oversubscribe --bind-to none -np " + std::to_string(ranks) + " " ANVIL_BINARY " " + args;
}
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

TEST(Launch, DegreesThatMissTheProcessCountFailOnEveryRankWithOneMessage) {
  const auto run = anvil::testing::make_tiny_run("launch_bad");
  std::string out;
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = run_command(mpirun(3, "train " + run.config + " --set parallel.tp=2"), out);
  const double secs = seconds_since(t0);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "timed out (a rank hung):\n" << out;
  EXPECT_LT(secs, 60.0);
  EXPECT_EQ(occurrences(out, "error:"), 1) << out;
  EXPECT_EQ(occurrences(out, "dp*tp*pp*sp = 1*2*1*1 = 2 but the job has 3 processes"), 1) << out;
  EXPECT_EQ(occurrences(out, "mpirun -np 2"), 1) << out;
  EXPECT_EQ(occurrences(out, "step "), 0) << out;
}

TEST(Launch, ADegreeTheModelCannotSplitFailsOnEveryRankWithOneMessage) {
  // The tiny model has 2 KV heads: tp = 4 cannot give every rank whole ones.
  const auto run = anvil::testing::make_tiny_run("launch_tp");
  std::string out;
  const int rc = run_command(mpirun(4, "train " + run.config + " --set parallel.tp=4"), out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "timed out (a rank hung):\n" << out;
  EXPECT_EQ(occurrences(out, "error"), 1) << out;
  EXPECT_EQ(occurrences(out, "parallel.tp = 4 does not divide num_key_value_heads = 2"), 1) << out;
}

TEST(Launch, DataParallelTrainingPrintsOnceAndWritesOneCheckpoint) {
  const auto run = anvil::testing::make_tiny_run("launch_dp2");
  std::string out;
  const int rc = run_command(mpirun(2, "train " + run.config +
                                           " --set parallel.dp=2 --set optimizer.zero=1 --set training.steps=4"
                                           " --set training.micro_batch_size=2 --set run.threads=1"),
                             out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(occurrences(out, "step      1/4 |"), 1) << out;
  EXPECT_EQ(occurrences(out, "data parallel: dp=2, ZeRO-1"), 1) << out;
  EXPECT_EQ(occurrences(out, "checkpoint: "), 1) << out;
  EXPECT_EQ(occurrences(out, "error"), 0) << out;
  // One process resumes the dp=2 checkpoint and goes on (layout-free checkpoints).
  const int again = run_command(std::string(ANVIL_BINARY) + " train " + run.config +
                                    " --set training.steps=5 --set training.micro_batch_size=4 --set run.threads=1",
                                out);
  ASSERT_EQ(again, 0) << out;
  EXPECT_EQ(occurrences(out, "resumed from"), 1) << out;
  EXPECT_EQ(occurrences(out, "step      5/5 |"), 1) << out;
}
