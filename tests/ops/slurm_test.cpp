// A real Slurm: Debian's slurmctld + slurmd + munge started on localhost for this test
// (scripts/slurm_local_cluster.sh), launch/slurm/train.sbatch submitted for 2-task training
// runs, and the daemons stopped at the end (a reaper stops them too if this process dies).
//   - srun with PMIx: the job trains, prints each rank's topology, writes its checkpoint;
//   - srun without PMI (--mpi=none, the file rendezvous): a job signalled mid-run (scancel
//     --signal=USR1) checkpoints, exits 75, requeues itself and resumes; its loss trajectory
//     equals an uninterrupted mpirun run bit for bit;
//   - a rank killed with SIGKILL under srun: the survivor names it and the job ends in 60 s.
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <filesystem>

#include "tests/ops/ops_support.h"
#include "tests/support/tiny_run.h"
#include "trainer/checkpoint.h"

using namespace anvil::ops_test;
using anvil::testing::run_command;
namespace fs = std::filesystem;

namespace {

const std::string kSource = ANVIL_SOURCE_DIR;

class LocalSlurm : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = (fs::path(::testing::TempDir()) / "anvil_slurm_cluster").string();
    std::string out;
    const int rc = run_command(kSource + "/scripts/slurm_local_cluster.sh start " + dir_ + " " +
                                   std::to_string(getpid()),
                               out);
    started_ = rc == 0;
    if (!started_) start_error_ = out;
  }
  static void TearDownTestSuite() {
    std::string out;
    run_command(kSource + "/scripts/slurm_local_cluster.sh stop " + dir_, out);
  }
  void SetUp() override { ASSERT_TRUE(started_) << "the local Slurm cluster did not start:\n" << start_error_; }

  // The environment sbatch passes on to the job (sbatch exports the caller's environment).
  static std::string env() {
    return "SLURM_CONF=" + dir_ + "/slurm.conf " + kMpiEnv + " ANVIL=" ANVIL_BINARY " ANVIL_LAUNCH_DIR=" + kSource +
           "/launch ";
  }
  static std::string slurm(const std::string& command) {
    std::string out;
    run_command(env() + command, out);
    return out;
  }
  // Submits train.sbatch for `run` from the run's directory; returns the job id.
  static std::string submit(const anvil::testing::TinyRun& run, const std::string& extra_env, const std::string& sets) {
    std::string out;
    const int rc = run_command("cd " + run.dir + " && " + env() + extra_env + " sbatch --parsable --ntasks=2 -o " +
                                   run.dir + "/job.out " + kSource + "/launch/slurm/train.sbatch " + run.config +
                                   " --set parallel.dp=2 --set training.micro_batch_size=2 --set run.threads=1 " + sets,
                               out);
    EXPECT_EQ(rc, 0) << out;
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
  }
  // "PENDING", "RUNNING", ... or "" once the job has left the queue.
  // The job's state; "" once it has left the queue. A squeue that fails (slurmctld slow to answer
  // on a loaded machine) says nothing about the job: "UNKNOWN", so waiting goes on.
  static std::string state(const std::string& job) {
    std::string s;
    const int rc = run_command(env() + "squeue -h -j " + job + " -o %T", s);
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    if (s.find("Invalid job id") != std::string::npos) return "";
    return rc == 0 ? s : "UNKNOWN";
  }
  static bool wait_for_end(const std::string& job, double seconds) {
    return wait_until(seconds, [&] { return state(job).empty(); });
  }

  static std::string dir_, start_error_;
  static bool started_;
};
std::string LocalSlurm::dir_, LocalSlurm::start_error_;
bool LocalSlurm::started_ = false;

}  // namespace

TEST_F(LocalSlurm, TrainSbatchRunsTwoTasksWithPmixAndWritesItsCheckpoint) {
  const auto run = anvil::testing::make_tiny_run("slurm_pmix");
  const std::string job = submit(run, "", "--set training.steps=30");
  ASSERT_TRUE(wait_for_end(job, 240)) << read_text(run.dir + "/job.out") << slurm("scontrol show job " + job);
  const std::string out = read_text(run.dir + "/job.out");
  EXPECT_NE(out.find("srun --mpi=pmix"), std::string::npos) << out;
  EXPECT_EQ(occurrences(out, "launcher srun+pmix"), 2) << out;  // anvil-run: one topology line per rank
  EXPECT_EQ(occurrences(out, "rank 0/2 | local 0/2"), 1) << out;
  EXPECT_EQ(occurrences(out, "rank 1/2 | local 1/2"), 1) << out;
  EXPECT_EQ(occurrences(out, "data parallel: dp=2"), 1) << out;
  EXPECT_EQ(occurrences(out, "step     30/30 |"), 1) << out;
  EXPECT_EQ(occurrences(out, "train.sbatch: anvil exited with code 0"), 1) << out;
  const std::string ckpt = anvil::latest_checkpoint(run.dir + "/run/checkpoints");
  ASSERT_FALSE(ckpt.empty()) << out;
  EXPECT_EQ(anvil::read_checkpoint_meta(ckpt).step, 30);
}

TEST_F(LocalSlurm, PreemptedJobRequeuesAndResumesBitwiseThroughTheFileRendezvous) {
  const int steps = 300;
  const std::string sets = "--set training.steps=" + std::to_string(steps) + " --set training.eval_every=100";
  // The uninterrupted reference, under mpirun.
  const auto straight = anvil::testing::make_tiny_run("slurm_straight");
  std::string out;
  ASSERT_EQ(run_command(std::string(kMpiEnv) + " timeout 300 mpirun --oversubscribe --bind-to none -np 2 "
                        ANVIL_BINARY " train " + straight.config +
                        " --set parallel.dp=2 --set training.micro_batch_size=2 --set run.threads=1 " + sets, out),
            0)
      << out;

  const auto run = anvil::testing::make_tiny_run("slurm_preempt");
  const std::string job = submit(run, "ANVIL_SRUN_MPI=none", sets);
  const std::string metrics = run.dir + "/run/metrics.jsonl";
  ASSERT_TRUE(wait_until(120, [&] { return step_lines(metrics).size() >= 20; })) << read_text(run.dir + "/job.out");
  slurm("scancel --signal=USR1 " + job);  // to every task of the job's steps, as --signal=USR1@T does
  // The script requeues the job; Slurm holds a requeued job ~2 minutes (BeginTime): release it now.
  ASSERT_TRUE(wait_until(120, [&] { return read_text(run.dir + "/job.out").find("requeueing job") != std::string::npos; }))
      << read_text(run.dir + "/job.out");
  ASSERT_TRUE(wait_until(60, [&] { return state(job) == "PENDING"; })) << state(job);
  slurm("scontrol update jobid=" + job + " StartTime=now");
  ASSERT_TRUE(wait_for_end(job, 240)) << read_text(run.dir + "/job.out");

  const std::string log = read_text(run.dir + "/job.out");
  EXPECT_EQ(occurrences(log, "srun --mpi=none"), 2) << log;
  EXPECT_EQ(occurrences(log, "launcher srun (file rendezvous)"), 4) << log;  // 2 ranks x 2 runs
  EXPECT_EQ(occurrences(log, "preempted (SIGUSR1) after step "), 1) << log;
  EXPECT_EQ(occurrences(log, "(restart 1)"), 1) << log;
  EXPECT_EQ(occurrences(log, "resumed from"), 1) << log;
  EXPECT_EQ(occurrences(log, "train.sbatch: anvil exited with code 0"), 1) << log;

  const auto a = step_lines(straight.dir + "/run/metrics.jsonl"), b = step_lines(metrics);
  ASSERT_EQ(a.size(), static_cast<size_t>(steps));
  ASSERT_EQ(b.size(), static_cast<size_t>(steps)) << log;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(b[i].step, a[i].step);
    EXPECT_EQ(bits(b[i].loss), bits(a[i].loss)) << "step " << a[i].step;
    EXPECT_EQ(bits(b[i].grad_norm), bits(a[i].grad_norm)) << "step " << a[i].step;
  }
}

TEST_F(LocalSlurm, AKilledRankUnderSrunIsNamedAndTheJobEndsWithin60Seconds) {
  const auto run = anvil::testing::make_tiny_run("slurm_kill");
  const std::string job = submit(run, "ANVIL_SRUN_MPI=none",
                                 "--set training.steps=100000 --set checkpoint.every=10 --set logging.every=1000");
  ASSERT_TRUE(wait_until(120, [&] { return newest_checkpoint_step(run.dir + "/run/checkpoints") >= 20; }))
      << read_text(run.dir + "/job.out");
  const auto pids = find_processes(run.dir, "SLURM_PROCID", "1");
  ASSERT_EQ(pids.size(), 1u) << read_text(run.dir + "/job.out");
  const auto t0 = std::chrono::steady_clock::now();
  kill(pids[0], SIGKILL);
  const bool ended = wait_for_end(job, 90);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!ended) slurm("scancel " + job);
  const std::string log = read_text(run.dir + "/job.out");
  EXPECT_TRUE(ended) << log;
  EXPECT_LT(secs, 60.0) << log;
  // Under srun nothing else watches the ranks: this is anvil's own watchdog.
  EXPECT_EQ(occurrences(log, "lost rank 1 of 2"), 1) << log;
  EXPECT_EQ(occurrences(log, "anvil exited with code 0"), 0) << log;
  const std::string newest = anvil::latest_checkpoint(run.dir + "/run/checkpoints");
  ASSERT_FALSE(newest.empty());
  EXPECT_GE(anvil::read_checkpoint_meta(newest).step, 20);
}

TEST_F(LocalSlurm, TopologySbatchJoinsTheRanksWithoutPmi) {
  const auto run = anvil::testing::make_tiny_run("slurm_topology");
  std::string out;
  ASSERT_EQ(run_command("cd " + run.dir + " && " + env() + "ANVIL_SRUN_MPI=none sbatch --parsable --ntasks=2 -o " +
                            run.dir + "/topo.out " + kSource + "/launch/slurm/topology.sbatch",
                        out),
            0)
      << out;
  std::string job = out.substr(0, out.find('\n'));
  ASSERT_TRUE(wait_for_end(job, 120));
  const std::string log = read_text(run.dir + "/topo.out");
  EXPECT_EQ(occurrences(log, "world: 2 ranks"), 1) << log;
  EXPECT_EQ(occurrences(log, "launcher srun (file rendezvous)"), 2) << log;
}
