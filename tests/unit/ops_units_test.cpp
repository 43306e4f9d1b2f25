// Units behind the ops features: the launcher variables resolved into rank/size/layout, the
// numerics guard's verdicts (its z-score against a direct computation) and its checkpointed
// state, training FLOPs per token against a count of the model's own weights, the MFU peak
// table, and the new config keys' validation.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <numeric>

#include "models/transformer.h"
#include "parallel/launch.h"
#include "trainer/config.h"
#include "trainer/metrics.h"
#include "trainer/numerics_guard.h"

using namespace anvil;

namespace {
LaunchInfo resolve(const std::map<std::string, std::string>& env) {
  return resolve_launch(
      [&](const char* name) -> const char* {
        auto it = env.find(name);
        return it == env.end() ? nullptr : it->second.c_str();
      },
      "node7");
}
const std::string kBase = "run: {name: t}\nmodel: {hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, "
                          "intermediate_size: 128, max_position_embeddings: 32, vocab_size: 100}\n"
                          "data: {train: none}\ntokenizer: {path: /etc/hostname}\ntraining: {steps: 10}\n";
std::string config_error(const std::vector<std::string>& sets) {
  try {
    parse_run_config(kBase, "t.yaml", "/tmp", sets);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(LaunchEnv, EachLauncherResolvesRankSizeAndLayout) {
  const LaunchInfo none = resolve({});
  EXPECT_FALSE(none.launched);
  EXPECT_EQ(none.size, 1);

  const LaunchInfo mpirun = resolve({{"OMPI_COMM_WORLD_RANK", "5"}, {"OMPI_COMM_WORLD_SIZE", "8"},
                                     {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                                     {"SLURM_PROCID", "0"}, {"SLURM_STEP_ID", "0"}, {"SLURM_NTASKS", "2"}});
  EXPECT_EQ(mpirun.launcher, Launcher::Mpirun);  // mpirun inside sbatch: Open MPI's numbers win
  EXPECT_EQ(mpirun.rank, 5);
  EXPECT_EQ(mpirun.size, 8);
  EXPECT_EQ(mpirun.local_rank, 1);
  EXPECT_EQ(mpirun.node, 1);
  EXPECT_EQ(mpirun.nodes, 2);
  EXPECT_FALSE(mpirun.needs_rendezvous());

  const std::map<std::string, std::string> step = {{"SLURM_PROCID", "3"},   {"SLURM_STEP_ID", "0"},
                                                   {"SLURM_STEP_NUM_TASKS", "4"}, {"SLURM_LOCALID", "1"},
                                                   {"SLURM_NODEID", "1"}, {"SLURM_STEP_NUM_NODES", "2"},
                                                   {"SLURM_STEP_TASKS_PER_NODE", "2(x2)"}};
  auto with = [&](std::map<std::string, std::string> extra) {
    extra.insert(step.begin(), step.end());
    return resolve(extra);
  };
  const LaunchInfo pmix = with({{"PMIX_RANK", "3"}});
  EXPECT_EQ(pmix.launcher, Launcher::SrunPmix);
  EXPECT_EQ(pmix.rank, 3);
  EXPECT_EQ(pmix.size, 4);
  EXPECT_EQ(pmix.local_rank, 1);
  EXPECT_EQ(pmix.local_size, 2);
  EXPECT_EQ(pmix.node, 1);
  EXPECT_EQ(pmix.nodes, 2);
  EXPECT_FALSE(pmix.needs_rendezvous());

  const LaunchInfo bare = resolve(step);
  EXPECT_EQ(bare.launcher, Launcher::SrunNoPmi);
  EXPECT_EQ(bare.rank, 3);
  EXPECT_TRUE(bare.needs_rendezvous());

  const LaunchInfo pmi2 = with({{"PMI_RANK", "3"}, {"PMI_SIZE", "4"}});
  EXPECT_EQ(pmi2.launcher, Launcher::Pmi);
  EXPECT_TRUE(pmi2.needs_rendezvous());  // Debian's Open MPI has no PMI-2 client
  EXPECT_EQ(pmi2.local_size, 2);

  // The batch script itself has SLURM_PROCID but is no task of a step.
  const LaunchInfo batch = resolve({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_ID", "9"}});
  EXPECT_FALSE(batch.launched);
  EXPECT_EQ(batch.size, 1);

  EXPECT_EQ(describe_launch(pmix), "rank 3/4 | local 1/2 | node 1/2 | host node7 | launcher srun+pmix");
}

TEST(LaunchEnv, SlurmTasksPerNodeLists) {
  EXPECT_EQ(tasks_on_node("4", 0), 4);
  EXPECT_EQ(tasks_on_node("2(x3),1", 2), 2);
  EXPECT_EQ(tasks_on_node("2(x3),1", 3), 1);
  EXPECT_EQ(tasks_on_node("2(x3),1", 4), -1);
  EXPECT_EQ(tasks_on_node("x", 0), -1);
  EXPECT_EQ(tasks_on_node("2(x", 0), -1);
}

TEST(NumericsGuard, NonFiniteValuesSkipOrStopAsConfigured) {
  GuardConfig skip;
  skip.on_nonfinite = "skip";
  skip.max_consecutive_skips = 2;
  NumericsGuard g(skip);
  EXPECT_EQ(g.check(1, 3.0, 1.0).verdict, GuardVerdict::Apply);
  const GuardDecision nan_loss = g.check(2, NAN, 1.0);
  EXPECT_EQ(nan_loss.verdict, GuardVerdict::Skip);
  EXPECT_EQ(nan_loss.reason, "loss is nan");
  EXPECT_EQ(g.check(3, 3.0, INFINITY).verdict, GuardVerdict::Skip);
  const GuardDecision third = g.check(4, NAN, 1.0);
  EXPECT_EQ(third.verdict, GuardVerdict::Stop);
  EXPECT_NE(third.reason.find("3 skipped steps in a row"), std::string::npos) << third.reason;
  EXPECT_EQ(g.skipped_total(), 3);

  NumericsGuard stop;  // default: stop
  EXPECT_EQ(stop.check(1, INFINITY, 1.0).verdict, GuardVerdict::Stop);
}

TEST(NumericsGuard, SpikeZScoreMatchesADirectComputation) {
  GuardConfig c;
  c.spike_zscore = 3;
  c.spike_window = 8;
  NumericsGuard g(c);
  std::vector<double> losses = {4.0, 3.9, 4.1, 3.8, 3.95, 4.05, 3.85, 3.9};
  for (size_t i = 0; i < losses.size(); ++i) EXPECT_EQ(g.check(int64_t(i) + 1, losses[i], 1.0).verdict, GuardVerdict::Apply);
  const double mean = std::accumulate(losses.begin(), losses.end(), 0.0) / losses.size();
  double var = 0;
  for (double x : losses) var += (x - mean) * (x - mean);
  const double sd = std::sqrt(var / losses.size());
  // Just under and just over the threshold.
  EXPECT_EQ(g.check(9, mean + 2.99 * sd, 1.0).verdict, GuardVerdict::Apply);
  NumericsGuard h(c);
  for (size_t i = 0; i < losses.size(); ++i) h.check(int64_t(i) + 1, losses[i], 1.0);
  const GuardDecision spike = h.check(9, mean + 3.01 * sd, 1.0);
  EXPECT_EQ(spike.verdict, GuardVerdict::Skip);
  EXPECT_NE(spike.reason.find("loss spike"), std::string::npos);
  // A falling loss is never a spike.
  EXPECT_EQ(h.check(10, mean - 10 * sd, 1.0).verdict, GuardVerdict::Apply);

  // The state survives a checkpoint: the same next verdict after save/restore.
  std::map<std::string, int64_t> counters;
  h.save(counters);
  NumericsGuard restored(c);
  restored.restore(counters);
  EXPECT_EQ(restored.skipped_total(), 1);
  for (double probe : {mean + 5 * sd, mean}) {
    NumericsGuard a = h, b = restored;
    EXPECT_EQ(a.check(11, probe, 1.0).verdict, b.check(11, probe, 1.0).verdict) << probe;
  }
}

TEST(Metrics, TrainingFlopsPerTokenCountsTheModelsWeights) {
  for (const std::string family : {"llama", "gpt2"}) {
    ModelConfig m = family == "llama" ? ModelConfig::llama() : ModelConfig::gpt2();
    m.vocab_size = 300, m.hidden_size = 64, m.num_hidden_layers = 3, m.num_attention_heads = 4;
    m.num_key_value_heads = family == "llama" ? 2 : 4;
    m.intermediate_size = 96, m.max_position_embeddings = 64, m.head_dim = 0;
    TransformerLM model(m);
    // Every matrix a token multiplies: the 2-D weights but the embedding lookups, plus the LM
    // head (tied or not).
    double weights = 0;
    bool head_seen = false;
    for (Param* p : model.params()) {
      if (p->value.dim() != 2) continue;
      if (p->name.find("embed") != std::string::npos || p->name.find("wte") != std::string::npos ||
          p->name.find("wpe") != std::string::npos)
        continue;
      head_seen = head_seen || p->name.find("lm_head") != std::string::npos;
      weights += static_cast<double>(p->value.numel());
    }
    if (!head_seen) weights += static_cast<double>(m.vocab_size * m.hidden_size);
    const int64_t T = 64;
    const double attention = 2.0 * T * m.num_attention_heads * m.resolved_head_dim() * m.num_hidden_layers;
    EXPECT_DOUBLE_EQ(training_flops_per_token(m, T), 3 * (2 * weights + attention)) << family;
  }
}

TEST(Metrics, PeakTableNamesTheDeviceAndNeverGuesses) {
  const PeakFlops h100 = lookup_peak_flops("NVIDIA H100 80GB HBM3", 0);
  EXPECT_EQ(h100.tflops, 989);
  EXPECT_NE(h100.describe().find("NVIDIA H100 80GB HBM3"), std::string::npos);
  EXPECT_EQ(lookup_peak_flops("NVIDIA H100 PCIe", 0).tflops, 756);  // the longer name wins
  const PeakFlops cpu = lookup_peak_flops("CPU AMD EPYC 7B13", 0);
  EXPECT_FALSE(cpu.known());
  EXPECT_NE(cpu.describe().find("unknown"), std::string::npos);
  // run.precision picks the column: fp32 runs are measured against the CUDA cores' fp32 peak
  // (NVIDIA's data sheets: H100 SXM 67, A100 19.5 TFLOP/s), never against the bf16 tensor cores.
  const PeakFlops h100_fp32 = lookup_peak_flops("NVIDIA H100 80GB HBM3", 0, "fp32");
  EXPECT_EQ(h100_fp32.tflops, 67);
  EXPECT_NE(h100_fp32.basis.find("fp32"), std::string::npos);
  EXPECT_EQ(lookup_peak_flops("NVIDIA A100-SXM4-80GB", 0, "bf16").tflops, 312);
  EXPECT_EQ(lookup_peak_flops("NVIDIA A100-SXM4-80GB", 0, "fp32").tflops, 19.5);
  EXPECT_FALSE(lookup_peak_flops("NVIDIA B200", 0, "fp32").known());  // no figure: unknown, not a guess
  const PeakFlops given = lookup_peak_flops("CPU AMD EPYC 7B13", 1.5);
  EXPECT_EQ(given.tflops, 1.5);
  EXPECT_EQ(given.basis, "logging.peak_tflops");
  EXPECT_EQ(format_duration(3725), "1h02m");
  EXPECT_EQ(format_duration(252), "4m12s");
}

TEST(OpsConfig, NewKeysParseAndBadValuesNameTheField) {
  const RunConfig c = parse_run_config(kBase, "t.yaml", "/tmp",
                                       {"guard.on_nonfinite=skip", "guard.spike_zscore=6", "guard.spike_window=50",
                                        "logging.progress=never", "logging.peak_tflops=2.5", "run.peer_timeout=45",
                                        "checkpoint.on_preempt=false", "logging.tensorboard=false"});
  EXPECT_EQ(c.guard.on_nonfinite, "skip");
  EXPECT_EQ(c.guard.spike_zscore, 6);
  EXPECT_EQ(c.guard.spike_window, 50);
  EXPECT_EQ(c.logging.progress, "never");
  EXPECT_EQ(c.logging.peak_tflops, 2.5);
  EXPECT_EQ(c.run.peer_timeout, 45);
  EXPECT_FALSE(c.checkpoint.on_preempt);
  EXPECT_FALSE(c.logging.tensorboard);
  // The resolved YAML reads back to the same settings.
  EXPECT_TRUE(same_settings(c, parse_run_config(to_yaml(c), "resolved", "/tmp")));

  EXPECT_NE(config_error({"guard.on_nonfinite=skp"}).find("guard.on_nonfinite"), std::string::npos);
  EXPECT_NE(config_error({"guard.on_nonfinite=skp"}).find("skip"), std::string::npos);
  EXPECT_NE(config_error({"guard.spike_zscore=0.5"}).find("guard.spike_zscore"), std::string::npos);
  EXPECT_NE(config_error({"guard.spike_window=1"}).find("guard.spike_window"), std::string::npos);
  EXPECT_NE(config_error({"logging.progress=sometimes"}).find("logging.progress"), std::string::npos);
  EXPECT_NE(config_error({"logging.peak_tflops=-1"}).find("logging.peak_tflops"), std::string::npos);
  EXPECT_NE(config_error({"run.peer_timeout=0.5"}).find("run.peer_timeout"), std::string::npos);
  EXPECT_NE(config_error({"guard.spike_zscor=3"}).find("guard.spike_zscore"), std::string::npos);  // did you mean
}
