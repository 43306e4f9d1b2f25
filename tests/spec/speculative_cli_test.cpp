// The speculative-decoding CLI on the tiny run: `anvil generate --draft` prints what plain greedy
// generation prints plus a stats line on stderr, `anvil eval spec` prints its table and writes
// JSON with every field, trees (--tree-width) do the same, and bad input (gamma 0, another tokenizer) exits with one clear line.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/support/tiny_run.h"

using anvil::testing::make_tiny_run;
using anvil::testing::must_run;
using anvil::testing::run_command;

namespace {

const std::string kAnvil = ANVIL_BINARY;

// A target (2 layers) and, unless told not to, a drafter (1 layer) trained briefly on the tiny
// run's corpus, in a directory of the test's own (CTest may run the tests in parallel).
struct SpecRun {
  anvil::testing::TinyRun run;
  std::string target, drafter;
  SpecRun(const std::string& name, bool with_drafter) : run(make_tiny_run(name)) {
    target = run.dir + "/run";
    drafter = run.dir + "/draft";
    must_run(kAnvil + " train " + run.config + " --set training.steps=6");
    if (with_drafter)
      must_run(kAnvil + " train " + run.config + " --set training.steps=4 --set model.num_hidden_layers=1 --set "
               "run.out_dir=" + drafter);
  }
};

// stdout of `command`, with its stderr in `err`; expects exit status 0.
std::string stdout_of(const SpecRun& r, const std::string& command, std::string& err) {
  const std::string err_file = r.run.dir + "/stderr.txt";
  std::string out;
  const int rc = run_command("(" + command + " 2>" + err_file + ")", out);
  std::ifstream in(err_file);
  err.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  EXPECT_EQ(rc, 0) << command << "\n" << out << err;
  return out;
}

TEST(SpecCli, GenerateWithADrafterPrintsWhatPlainGreedyPrints) {
  const SpecRun r("spec_cli_generate", true);
  const std::string gen = kAnvil + " generate --checkpoint " + r.target + " --prompt 'The GNU General' --max-tokens 12 ";
  std::string err;
  const std::string plain = stdout_of(r, gen + "--temperature 0", err);
  const std::string spec = stdout_of(r, gen + "--temperature 0 --draft " + r.drafter + " --gamma 3", err);
  EXPECT_EQ(spec, plain);
  EXPECT_EQ(spec.rfind("The GNU General", 0), 0u) << spec;
  EXPECT_NE(err.find("speculative: gamma 3, tau "), std::string::npos) << err;
  EXPECT_NE(err.find("bonus token included"), std::string::npos) << err;
  // Sampling runs too (its text differs from plain sampling: other random streams, same distribution).
  const std::string sampled = stdout_of(r, gen + "--temperature 1 --top-k 20 --draft " + r.drafter, err);
  EXPECT_EQ(sampled.rfind("The GNU General", 0), 0u) << sampled;
}

TEST(SpecCli, EvalSpecPrintsTheTableAndWritesJson) {
  const SpecRun r("spec_cli_eval", true);
  const std::string json = r.run.dir + "/spec.json";
  std::string err;
  const std::string out = stdout_of(r, kAnvil + " eval spec --target " + r.target + " --draft " + r.drafter +
                                        " --gammas 2,3 --temperatures 0,1 --max-tokens 10 --num-prompts 3 "
                                        "--prompt-tokens 6 --json " + json, err);
  for (const char* field : {"tau = tokens committed per target forward", "acceptance by position", "fwd/tok",
                            "spec tok/s", "plain tok/s", "speedup", "validation documents"})
    EXPECT_NE(out.find(field), std::string::npos) << "missing '" << field << "' in:\n" << out;
  std::ifstream in(json);
  ASSERT_TRUE(in.good()) << json;
  const nlohmann::json report = nlohmann::json::parse(in);
  EXPECT_EQ(report["prompts"], 3);
  ASSERT_EQ(report["cases"].size(), 4u);
  for (const auto& c : report["cases"]) {
    for (const char* field : {"gamma", "temperature", "tau", "tau_definition", "acceptance_rate",
                              "acceptance_by_position", "target_forwards_per_token", "drafter_forwards",
                              "drafter_overhead_c", "draft_seconds", "target_seconds", "tokens_per_second",
                              "plain_tokens_per_second", "speedup", "same_tokens_as_plain"})
      EXPECT_TRUE(c.contains(field)) << field;
    const int gamma = c["gamma"];
    EXPECT_EQ(c["acceptance_by_position"].size(), static_cast<size_t>(gamma));
    EXPECT_GE(c["tau"].get<double>(), 1.0);
    EXPECT_LE(c["tau"].get<double>(), gamma + 1.0);
    EXPECT_EQ(c["tokens"], 30);
    if (c["temperature"] == 0) EXPECT_TRUE(c["same_tokens_as_plain"].get<bool>()) << c.dump();
  }
  // Prompts from a file.
  const std::string prompts = r.run.dir + "/prompts.txt";
  std::ofstream(prompts) << "This License\n\nThe GNU General Public License\n";
  const std::string from_file = stdout_of(r, kAnvil + " eval spec --target " + r.target + " --draft " + r.drafter +
                                              " --prompts " + prompts + " --gammas 2 --temperatures 0 --max-tokens 6",
                                          err);
  EXPECT_NE(from_file.find("2 prompts from " + prompts), std::string::npos) << from_file;
  // Plain `anvil eval` is unchanged, and still needs its checkpoint.
  std::string plain_eval;
  ASSERT_EQ(run_command(kAnvil + " eval --checkpoint " + r.target + " --batches 2", plain_eval), 0) << plain_eval;
  EXPECT_NE(plain_eval.find("perplexity"), std::string::npos) << plain_eval;
  EXPECT_NE(run_command(kAnvil + " eval", plain_eval), 0);
  EXPECT_NE(plain_eval.find("--checkpoint"), std::string::npos) << plain_eval;
}

TEST(SpecCli, TreesDecodeLikePlainGreedyAndReportTheirShape) {
  const SpecRun r("spec_cli_tree", true);
  const std::string gen = kAnvil + " generate --checkpoint " + r.target + " --prompt 'The GNU General' --max-tokens 12 ";
  std::string err;
  const std::string plain = stdout_of(r, gen + "--temperature 0", err);
  const std::string tree = stdout_of(r, gen + "--temperature 0 --draft " + r.drafter + " --gamma 2 --tree-width 3", err);
  EXPECT_EQ(tree, plain);
  EXPECT_NE(err.find("speculative: tree width 3 depth 2, tau "), std::string::npos) << err;
  const std::string json = r.run.dir + "/tree.json";
  const std::string out = stdout_of(r, kAnvil + " eval spec --target " + r.target + " --draft " + r.drafter +
                                        " --tree-width 2 --gammas 1,3 --temperatures 0,1 --max-tokens 8 --num-prompts 2 "
                                        "--prompt-tokens 6 --json " + json, err);
  EXPECT_NE(out.find("trees of width 2"), std::string::npos) << out;
  std::ifstream in(json);
  ASSERT_TRUE(in.good()) << json;
  const nlohmann::json report = nlohmann::json::parse(in);
  EXPECT_EQ(report["tree_width"], 2);
  ASSERT_EQ(report["cases"].size(), 4u);
  for (const auto& c : report["cases"]) {
    const int depth = c["gamma"];
    EXPECT_EQ(c["tree_width"], 2);
    EXPECT_EQ(c["tree_nodes"], depth == 1 ? 2 : 14);
    EXPECT_EQ(c["acceptance_by_position"].size(), static_cast<size_t>(depth));
    EXPECT_LE(c["tau"].get<double>(), depth + 1.0);
    if (c["temperature"] == 0) EXPECT_TRUE(c["same_tokens_as_plain"].get<bool>()) << c.dump();
  }
  // A tree larger than the cache: one line naming the tree, before any decoding.
  std::string bad;
  EXPECT_NE(run_command(kAnvil + " eval spec --target " + r.target + " --draft " + r.drafter +
                            " --tree-width 8 --gammas 3 --max-tokens 8 --num-prompts 2 --prompt-tokens 6", bad), 0);
  EXPECT_NE(bad.find("a tree of width 8 and depth 3 has 584 nodes"), std::string::npos) << bad;
  EXPECT_EQ(bad.find("terminate called"), std::string::npos) << bad;
}

TEST(SpecCli, BadInputGetsOneClearLine) {
  const SpecRun r("spec_cli_bad", false);
  std::string out;
  EXPECT_NE(run_command(kAnvil + " generate --checkpoint " + r.target + " --draft " + r.target +
                            " --prompt x --gamma 0", out), 0);
  EXPECT_NE(out.find("gamma"), std::string::npos) << out;
  EXPECT_EQ(out.find("terminate called"), std::string::npos) << out;
  EXPECT_NE(run_command(kAnvil + " eval spec --target " + r.target + " --draft " + r.target + " --gammas 2,0", out), 0);
  EXPECT_NE(out.find("--gammas 0"), std::string::npos) << out;
  // A drafter trained with another tokenizer (and its own store).
  const std::string tok = r.run.dir + "/other_tok.json", store = r.run.dir + "/other.h5";
  must_run(kAnvil + " tokenizer train --input " + r.run.corpus + " --vocab-size 300 --output " + tok);
  must_run(kAnvil + " data prepare --format text --input " + r.run.corpus + " --tokenizer " + tok + " --output " + store);
  const std::string other = r.run.dir + "/other_draft";
  must_run(kAnvil + " train " + r.run.config + " --set training.steps=4 --set model.num_hidden_layers=1 --set "
           "tokenizer.path=" + tok + " --set data.train=" + store + " --set run.out_dir=" + other);
  EXPECT_NE(run_command(kAnvil + " eval spec --target " + r.target + " --draft " + other + " --gammas 2", out), 0);
  EXPECT_NE(out.find("the target's tokenizer"), std::string::npos) << out;
  EXPECT_EQ(out.find("terminate called"), std::string::npos) << out;
}

}  // namespace
