// Failures: a rank killed with SIGKILL makes the survivor stop within 60 s with a message
// naming the lost rank (never a hang), and the newest complete checkpoint still loads and
// resumes; checkpoints truncated or corrupted on purpose are skipped by resume: auto with a
// warning.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <chrono>
#include <csignal>
#include <filesystem>

#include "tests/ops/ops_support.h"
#include "tests/support/tiny_run.h"
#include "trainer/checkpoint.h"

using namespace anvil::ops_test;
namespace fs = std::filesystem;

TEST(RankFailure, AKilledRankIsNamedAndTheSurvivorExitsWithin60Seconds) {
  const auto run = anvil::testing::make_tiny_run("rank_kill");
  const std::string cmd = std::string(kMpiEnv) + " timeout 300 mpirun --oversubscribe --bind-to none -np 2 "
                          ANVIL_BINARY " train " + run.config +
                          " --set parallel.dp=2 --set training.micro_batch_size=2 --set training.steps=100000"
                          " --set run.threads=1 --set checkpoint.every=10 --set logging.every=1000";
  const std::string ckpts = run.dir + "/run/checkpoints";
  Background job(cmd, run.dir + "/killed.log", run.dir);
  // Checkpoints every 10 steps, the newest 2 kept: step_00000020 may be pruned before we look.
  ASSERT_TRUE(wait_until(120, [&] { return newest_checkpoint_step(ckpts) >= 20; })) << job.output();
  const auto pids = find_processes(run.dir, "OMPI_COMM_WORLD_RANK", "1");
  ASSERT_EQ(pids.size(), 1u);
  const auto t0 = std::chrono::steady_clock::now();
  kill(pids[0], SIGKILL);
  const int rc = job.wait(90);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string out = job.output();
  EXPECT_NE(rc, -1) << "the survivor hung:\n" << out;
  EXPECT_NE(rc, 0) << out;
  EXPECT_LT(secs, 60.0) << out;
  // anvil's peer watchdog names the rank; mpirun, which may be quicker to end the job, does too.
  EXPECT_TRUE(out.find("lost rank 1 of 2") != std::string::npos ||
              out.find("process rank 1 with PID") != std::string::npos)
      << out;

  // The newest complete checkpoint loads, and a new run resumes from it.
  const std::string newest = anvil::latest_checkpoint(ckpts);
  ASSERT_FALSE(newest.empty());
  const int64_t step = anvil::read_checkpoint_meta(newest).step;
  EXPECT_GE(step, 20);
  std::string again;
  ASSERT_EQ(anvil::testing::run_command(std::string(kMpiEnv) + " timeout 300 mpirun --oversubscribe --bind-to none "
                                        "-np 2 " ANVIL_BINARY " train " + run.config +
                                        " --set parallel.dp=2 --set training.micro_batch_size=2 --set run.threads=1"
                                        " --set checkpoint.every=0 --set training.steps=" + std::to_string(step + 5),
                                        again),
            0)
      << again;
  EXPECT_EQ(occurrences(again, "resumed from " + newest + " at step " + std::to_string(step)), 1) << again;
  // metrics.jsonl was rewound to the checkpoint: the steps the killed run logged after it are not repeated.
  const auto lines = step_lines(run.dir + "/run/metrics.jsonl");
  ASSERT_EQ(lines.size(), static_cast<size_t>(step + 5));
  for (size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(lines[i].step, static_cast<int64_t>(i + 1));
}

namespace {
// Flips 16 bytes inside the stored values of one parameter (located with H5Dget_offset), so the
// tensor's data is damaged and the HDF5 structure around it is not.
void corrupt_tensor_data(const std::string& file, const std::string& dataset) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  const hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  ASSERT_GE(d, 0) << dataset;
  const haddr_t offset = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  ASSERT_NE(offset, HADDR_UNDEF);
  std::string bytes = read_text(file);
  ASSERT_LT(offset + 64, bytes.size());
  for (size_t i = offset + 32; i < offset + 48; ++i) bytes[i] = static_cast<char>(bytes[i] ^ 0x5A);
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
}
}  // namespace

TEST(RankFailure, TruncatedAndCorruptedCheckpointsAreSkippedWithAWarning) {
  const auto run = anvil::testing::make_tiny_run("ckpt_damage");
  std::string out;
  ASSERT_EQ(anvil::testing::run_command(std::string(ANVIL_BINARY) + " train " + run.config +
                                        " --set training.steps=10 --set checkpoint.every=5 --set checkpoint.keep=0",
                                        out),
            0)
      << out;
  const fs::path root = run.dir + "/run/checkpoints";
  const fs::path good = root / "step_00000010";
  ASSERT_TRUE(fs::exists(good / anvil::kCheckpointFile));
  // step 15: the same file with damaged tensor bytes; step 20: cut short.
  fs::create_directories(root / "step_00000015");
  fs::copy_file(good / anvil::kCheckpointFile, root / "step_00000015" / anvil::kCheckpointFile);
  corrupt_tensor_data((root / "step_00000015" / anvil::kCheckpointFile).string(), "/params/model.embed_tokens.weight");
  fs::create_directories(root / "step_00000020");
  fs::copy_file(good / anvil::kCheckpointFile, root / "step_00000020" / anvil::kCheckpointFile);
  fs::resize_file(root / "step_00000020" / anvil::kCheckpointFile,
                  fs::file_size(good / anvil::kCheckpointFile) / 2);

  ASSERT_EQ(anvil::testing::run_command(std::string(ANVIL_BINARY) + " train " + run.config +
                                        " --set training.steps=12 --set checkpoint.keep=0",
                                        out),
            0)
      << out;
  EXPECT_EQ(occurrences(out, "warning: skipping checkpoint " + (root / "step_00000020").string()), 1) << out;
  EXPECT_EQ(occurrences(out, "warning: skipping checkpoint " + (root / "step_00000015").string()), 1) << out;
  EXPECT_NE(out.find("checksum"), std::string::npos) << out;
  EXPECT_EQ(occurrences(out, "resumed from " + good.string() + " at step 10"), 1) << out;
}
