// The self-speculation CLI on the tiny run (2 layers): `anvil generate --early-exit 1` prints what
// plain greedy generation prints plus a stats line, `anvil eval selfspec` prints its table per exit
// layer and writes JSON, and bad exit layers / gammas exit with one clear line before any decoding.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/support/tiny_run.h"

using anvil::testing::make_tiny_run;
using anvil::testing::must_run;
using anvil::testing::run_command;

namespace {

const std::string kAnvil = ANVIL_BINARY;

TEST(SelfSpecCli, DecodesLikePlainGreedyReportsAndRefusesBadFlags) {
  const anvil::testing::TinyRun run = make_tiny_run("selfspec_cli");
  const std::string model = run.dir + "/run";
  must_run(kAnvil + " train " + run.config + " --set training.steps=6");

  // generate: the same text as plain greedy decoding; the stats go to stderr.
  const std::string gen = kAnvil + " generate --checkpoint " + model + " --prompt 'The GNU General' --max-tokens 12 "
                          "--temperature 0";
  const std::string err_file = run.dir + "/stderr.txt";
  std::string plain, early;
  ASSERT_EQ(run_command("(" + gen + " 2>/dev/null)", plain), 0) << plain;
  ASSERT_EQ(run_command("(" + gen + " --early-exit 1 --gamma 3 2>" + err_file + ")", early), 0) << early;
  EXPECT_EQ(early, plain);
  std::ifstream err_in(err_file);
  const std::string err((std::istreambuf_iterator<char>(err_in)), std::istreambuf_iterator<char>());
  EXPECT_NE(err.find("early exit 1: speculative: gamma 3, tau "), std::string::npos) << err;

  // eval selfspec: the spec table per exit layer, JSON with the exit layer on every case.
  const std::string json = run.dir + "/selfspec.json";
  const std::string out = must_run(kAnvil + " eval selfspec --checkpoint " + model + " --exit-layer 1 --gammas 2,3 "
                                   "--temperatures 0,1 --max-tokens 8 --num-prompts 2 --prompt-tokens 6 --json " + json);
  for (const char* field : {"exit layer 1 of 2", "tau = tokens committed per target forward", "spec tok/s",
                            "plain tok/s", "speedup", "validation documents"})
    EXPECT_NE(out.find(field), std::string::npos) << "missing '" << field << "' in:\n" << out;
  std::ifstream in(json);
  ASSERT_TRUE(in.good()) << json;
  const nlohmann::json report = nlohmann::json::parse(in);
  EXPECT_EQ(report["num_layers"], 2);
  ASSERT_EQ(report["cases"].size(), 4u);
  for (const auto& c : report["cases"]) {
    EXPECT_EQ(c["exit_layer"], 1);
    EXPECT_EQ(c["tokens"], 16);
    EXPECT_GE(c["tau"].get<double>(), 1.0);
    EXPECT_LE(c["tau"].get<double>(), c["gamma"].get<int>() + 1.0);
    if (c["temperature"] == 0) EXPECT_TRUE(c["same_tokens_as_plain"].get<bool>()) << c.dump();
  }

  // Bad flags: one clear line each, no decoding, no crash.
  const std::string eval = kAnvil + " eval selfspec --checkpoint " + model + " --max-tokens 4 --num-prompts 1 ";
  const std::pair<std::string, std::string> bad[] = {
      {eval + "--exit-layer 2", "exit layer 2 is outside [1, 1]"},
      {eval + "--exit-layer 0", "exit layer 0 is outside [1, 1]"},
      {eval + "--exit-layer 1 --gamma 0", "--gammas 0 — every gamma"},
      {gen + " --early-exit 2", "exit layer 2 is outside [1, 1]"},
      {gen + " --early-exit 1 --gamma 0", "gamma 0"},
  };
  for (const auto& [command, message] : bad) {
    std::string got;
    EXPECT_NE(run_command(command, got), 0) << command;
    EXPECT_NE(got.find(message), std::string::npos) << command << "\n" << got;
    EXPECT_EQ(got.find("terminate called"), std::string::npos) << got;
    EXPECT_EQ(got.find("tau"), std::string::npos) << "decoded before refusing: " << got;
  }
}

}  // namespace
