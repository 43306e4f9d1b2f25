// The Medusa CLI on a tiny Medusa-1 run (2 heads on the tiny trained base): `anvil generate
// --medusa` prints what plain greedy generation of the base prints (and plain `generate
// --checkpoint RUN` still decodes the base alone), `anvil eval medusa` prints its table and writes
// JSON with every field, `--build-tree N` writes a tree that `--tree FILE` decodes with, and bad
// input (a tree deeper than the heads, a run that is not Medusa's, a base that moved or differs,
// typical acceptance at T = 0) exits with one clear line.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/support/tiny_run.h"

using anvil::testing::must_run;
using anvil::testing::run_command;

namespace {

const std::string kAnvil = ANVIL_BINARY;

// The tiny base (dir/target, trained 30 steps) and a Medusa-1 run of 2 heads on it (dir/medusa).
struct MedusaRun {
  anvil::testing::TinyRun run;
  std::string base, medusa;
  explicit MedusaRun(const std::string& name) : run(anvil::testing::make_tiny_target_run(name)) {
    base = run.dir + "/target";
    medusa = run.dir + "/medusa";
    must_run(kAnvil + " train " + run.config + " --set task.name=medusa --set model.init_from=" + base +
             " --set medusa.num_heads=2 --set training.steps=8 --set training.eval_every=0 --set "
             "optimizer.lr=1.0e-2 --set run.out_dir=" + medusa);
  }
  ~MedusaRun() { std::filesystem::remove_all(run.dir); }
};

// stdout of `command`, with its stderr in `err`; expects exit status 0.
std::string stdout_of(const MedusaRun& r, const std::string& command, std::string& err) {
  const std::string err_file = r.run.dir + "/stderr.txt";
  std::string out;
  const int rc = run_command("(" + command + " 2>" + err_file + ")", out);
  std::ifstream in(err_file);
  err.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  EXPECT_EQ(rc, 0) << command << "\n" << out << err;
  return out;
}

// The output of a command that must fail with one clear line (no crash).
std::string failure_of(const std::string& command) {
  std::string out;
  EXPECT_NE(run_command(command, out), 0) << command;
  EXPECT_EQ(out.find("terminate called"), std::string::npos) << out;
  return out;
}

TEST(MedusaCli, GenerateEvalAndBuildTree) {
  const MedusaRun r("medusa_cli");
  const std::string prompt = " --prompt 'The GNU General' --max-tokens 12 ";
  std::string err;
  const std::string plain = stdout_of(r, kAnvil + " generate --checkpoint " + r.base + prompt + "--temperature 0", err);
  const std::string medusa = stdout_of(r, kAnvil + " generate --medusa " + r.medusa + prompt + "--temperature 0", err);
  EXPECT_EQ(medusa, plain);
  EXPECT_EQ(medusa.rfind("The GNU General", 0), 0u) << medusa;
  EXPECT_NE(err.find("medusa: tree of 16 nodes, depth 2, tau "), std::string::npos) << err;
  EXPECT_NE(err.find("acceptance per head"), std::string::npos) << err;
  // The run as a plain checkpoint: its base alone.
  EXPECT_EQ(stdout_of(r, kAnvil + " generate --checkpoint " + r.medusa + prompt + "--temperature 0", err), plain);
  // Sampling, lossless and typical, and a tree given as a list.
  for (const std::string mode : {"lossless", "typical"}) {
    const std::string sampled = stdout_of(r, kAnvil + " generate --medusa " + r.medusa + prompt + "--temperature 1 "
                                          "--medusa-mode " + mode + " --tree '[(0,), (1,), (0, 0)]'", err);
    EXPECT_EQ(sampled.rfind("The GNU General", 0), 0u) << sampled;
    EXPECT_NE(err.find("medusa: tree of 3 nodes, depth 2"), std::string::npos) << err;
  }

  const std::string json = r.run.dir + "/medusa.json";
  const std::string out = stdout_of(r, kAnvil + " eval medusa --medusa " + r.medusa + " --temperatures 0,1 "
                                        "--max-tokens 10 --num-prompts 3 --prompt-tokens 6 --json " + json, err);
  for (const char* field : {"tau = tokens committed per base forward", "acceptance per head", "fwd/tok",
                            "medusa tok/s", "plain tok/s", "speedup", "validation documents", "tree default of 16 nodes"})
    EXPECT_NE(out.find(field), std::string::npos) << "missing '" << field << "' in:\n" << out;
  std::ifstream in(json);
  ASSERT_TRUE(in.good()) << json;
  const nlohmann::json report = nlohmann::json::parse(in);
  EXPECT_EQ(report["prompts"], 3);
  EXPECT_EQ(report["heads"], 2);
  EXPECT_EQ(report["tree_nodes"], 16);
  ASSERT_EQ(report["cases"].size(), 2u);
  for (const auto& c : report["cases"]) {
    for (const char* field : {"temperature", "mode", "tau", "tau_definition", "acceptance_rate", "acceptance_per_head",
                              "base_forwards_per_token", "heads_seconds", "base_seconds", "tokens_per_second",
                              "plain_tokens_per_second", "speedup", "same_tokens_as_plain"})
      EXPECT_TRUE(c.contains(field)) << field;
    EXPECT_EQ(c["acceptance_per_head"].size(), 2u);
    EXPECT_GE(c["tau"].get<double>(), 1.0);
    EXPECT_LE(c["tau"].get<double>(), 3.0);
    EXPECT_EQ(c["tokens"], 30);
    EXPECT_EQ(c["mode"], c["temperature"] == 0 ? "greedy" : "lossless");
    if (c["temperature"] == 0) EXPECT_TRUE(c["same_tokens_as_plain"].get<bool>()) << c.dump();
  }

  // A calibrated tree, written and read back.
  const std::string tree = r.run.dir + "/tree.txt";
  const std::string built = stdout_of(r, kAnvil + " eval medusa --medusa " + r.medusa + " --build-tree 5 --max-tokens "
                                          "12 --num-prompts 3 --prompt-tokens 6 --output " + tree, err);
  for (const char* field : {"heads' top-10 accuracy", "head 1 (token t+2", "head 2 (token t+3", "tree of 5 nodes",
                            "expected tau", "wrote " })
    EXPECT_NE(built.find(field), std::string::npos) << "missing '" << field << "' in:\n" << built;
  ASSERT_TRUE(std::filesystem::is_regular_file(tree));
  EXPECT_EQ(stdout_of(r, kAnvil + " generate --medusa " + r.medusa + prompt + "--temperature 0 --tree " + tree, err),
            plain);
  EXPECT_NE(err.find("medusa: tree of 5 nodes"), std::string::npos) << err;

  // Bad input, one clear line each.
  std::string bad = failure_of(kAnvil + " generate --medusa " + r.medusa + prompt + "--tree mc_sim_7b_63");
  EXPECT_NE(bad.find("uses head 3 but the model has 2 Medusa heads"), std::string::npos) << bad;
  bad = failure_of(kAnvil + " generate --medusa " + r.medusa + prompt + "--temperature 0 --medusa-mode typical");
  EXPECT_NE(bad.find("typical acceptance samples and needs a temperature > 0"), std::string::npos) << bad;
  bad = failure_of(kAnvil + " generate --medusa " + r.base + prompt);
  EXPECT_NE(bad.find("is not a Medusa run (its task.name is lm)"), std::string::npos) << bad;
  bad = failure_of(kAnvil + " generate --medusa " + r.medusa + " --checkpoint " + r.base + prompt);
  EXPECT_NE(bad.find("without --checkpoint"), std::string::npos) << bad;
  bad = failure_of(kAnvil + " eval medusa --medusa " + r.medusa + " --tree nope --num-prompts 2 --prompt-tokens 6");
  EXPECT_NE(bad.find("--tree: 'nope' is not a default tree"), std::string::npos) << bad;
  bad = failure_of(kAnvil + " eval medusa --medusa " + r.medusa + " --build-tree 4 --prompt-tokens 16");
  EXPECT_NE(bad.find("16 tokens and 64 continuation tokens do not fit the base's 64 positions"), std::string::npos)
      << bad;
  // A base of another shape named by --set model.init_from.
  const std::string other = r.run.dir + "/other";
  must_run(kAnvil + " train " + r.run.config + " --set model.hidden_size=48 --set training.steps=1 --set "
           "schedule.warmup_steps=0 --set training.eval_every=0 --set run.out_dir=" + other);
  bad = failure_of(kAnvil + " generate --medusa " + r.medusa + prompt + "--set model.init_from=" + other);
  EXPECT_NE(bad.find("were trained on a base with hidden_size = 32"), std::string::npos) << bad;
  EXPECT_NE(bad.find("has hidden_size = 48"), std::string::npos) << bad;
  // The base moved: named with the fix, which works.
  const std::string moved = r.run.dir + "/target_moved";
  std::filesystem::rename(r.base, moved);
  bad = failure_of(kAnvil + " generate --medusa " + r.medusa + prompt);
  EXPECT_NE(bad.find("which no longer exists"), std::string::npos) << bad;
  EXPECT_NE(bad.find("--set model.init_from=PATH"), std::string::npos) << bad;
  EXPECT_EQ(stdout_of(r, kAnvil + " generate --medusa " + r.medusa + prompt + "--temperature 0 --set model.init_from=" +
                             moved, err), plain);
}

}  // namespace
