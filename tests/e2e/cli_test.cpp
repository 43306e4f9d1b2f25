// The anvil CLI end to end: the tokenizer/data/train/eval/generate chain works,
// and bad input exits non-zero with one message naming the field or file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/support/tiny_run.h"

using anvil::testing::make_tiny_run;
using anvil::testing::run_command;

namespace {
const std::string kAnvil = ANVIL_BINARY;

void expect_failure(const std::string& cmd, const std::vector<std::string>& must_contain) {
  std::string out;
  const int rc = run_command(cmd, out);
  EXPECT_NE(rc, 0) << cmd << "\n" << out;
  for (const std::string& s : must_contain) EXPECT_NE(out.find(s), std::string::npos) << "missing '" << s << "' in:\n" << out;
  EXPECT_EQ(out.find("terminate called"), std::string::npos) << out;
}
}  // namespace

TEST(Cli, PipelineFromTextToGeneration) {
  const auto run = make_tiny_run("cli_pipeline");
  std::string out;
  const std::string tok = run.dir + "/tok2.json", store = run.dir + "/gpl2.h5";
  ASSERT_EQ(run_command(kAnvil + " tokenizer train --input " + run.corpus + " --vocab-size 400 --output " + tok, out), 0)
      << out;
  ASSERT_EQ(run_command(kAnvil + " data prepare --format text --input " + run.corpus + " --tokenizer " + tok + " --output " + store,
                        out), 0) << out;
  ASSERT_EQ(run_command(kAnvil + " train " + run.config + " --set tokenizer.path=" + tok + " --set data.train=" + store +
                        " --set training.steps=6 --set training.sample_every=6 --set training.sample_tokens=8", out), 0)
      << out;
  EXPECT_NE(out.find("validation loss"), std::string::npos) << out;
  EXPECT_NE(out.find("sample: "), std::string::npos) << out;
  EXPECT_TRUE(std::filesystem::exists(run.dir + "/run/metrics.jsonl"));
  EXPECT_TRUE(std::filesystem::exists(run.dir + "/run/config.yaml"));
  ASSERT_EQ(run_command(kAnvil + " eval --checkpoint " + run.dir + "/run --batches 2", out), 0) << out;
  EXPECT_NE(out.find("perplexity"), std::string::npos) << out;
  ASSERT_EQ(run_command(kAnvil + " generate --checkpoint " + run.dir + "/run --prompt 'The GNU' --max-tokens 5 "
                        "--temperature 0", out), 0) << out;
  EXPECT_EQ(out.rfind("The GNU", 0), 0u) << out;
  // --set reaches the checkpoint's stored config (how a GPU-trained run is sampled on a CPU).
  ASSERT_EQ(run_command(kAnvil + " generate --checkpoint " + run.dir + "/run --prompt 'The GNU' --max-tokens 5 "
                        "--temperature 0 --set run.device=cpu --set run.precision=fp32", out), 0) << out;
  EXPECT_EQ(out.rfind("The GNU", 0), 0u) << out;
  expect_failure(kAnvil + " generate --checkpoint " + run.dir + "/run --prompt x --set run.precision=bf16",
                 {"run.precision"});
}

TEST(Cli, UnknownKeySuggestsTheClosest) {
  const auto run = make_tiny_run("cli_unknown", "logging: {evry: 5}\n");
  expect_failure(kAnvil + " train " + run.config, {"run.yaml", "logging.evry", "logging.every"});
  const auto clean = make_tiny_run("cli_unknown_set");
  expect_failure(kAnvil + " train " + clean.config + " --set training.stpes=5", {"training.stpes", "training.steps"});
}

TEST(Cli, WrongTypeNamesTheField) {
  const auto run = make_tiny_run("cli_type");
  expect_failure(kAnvil + " train " + run.config + " --set training.micro_batch_size=lots",
                 {"training.micro_batch_size", "lots"});
}

TEST(Cli, MissingDataFileNamesFieldAndPath) {
  const auto run = make_tiny_run("cli_missing");
  expect_failure(kAnvil + " train " + run.config + " --set data.train=/nonexistent/corpus.h5",
                 {"data.train", "/nonexistent/corpus.h5"});
}

TEST(Cli, CheckpointFromADifferentModelShapeIsRefused) {
  const auto run = make_tiny_run("cli_shape");
  std::string out;
  ASSERT_EQ(run_command(kAnvil + " train " + run.config + " --set training.steps=6", out), 0) << out;
  expect_failure(kAnvil + " train " + run.config + " --set training.steps=8 --set model.hidden_size=48",
                 {"checkpoint", "model.embed_tokens.weight", "[512, 32]", "[512, 48]"});
}

TEST(Cli, BadFlagsAndFilesGetClearErrors) {
  const auto run = make_tiny_run("cli_flags");
  expect_failure(kAnvil + " train", {"config"});
  expect_failure(kAnvil + " frobnicate", {"frobnicate"});
  expect_failure(kAnvil + " data prepare --format text --input " + run.corpus + " --tokenizer " + run.corpus +
                 " --output /tmp/x.h5", {run.corpus});
  expect_failure(kAnvil + " data prepare --format text --input " + run.corpus + " --tokenizer " + run.tokenizer +
                 " --output /tmp/x.h5 --eos '<nope>'", {"<nope>"});
  // A store made with another tokenizer.
  std::string out;
  const std::string other = run.dir + "/other.json";
  ASSERT_EQ(run_command(kAnvil + " tokenizer train --input " + run.corpus + " --vocab-size 300 --output " + other, out),
            0) << out;
  expect_failure(kAnvil + " train " + run.config + " --set tokenizer.path=" + other, {"gpl.h5", "tokenizer"});
  expect_failure(kAnvil + " generate --checkpoint " + run.dir + " --prompt x", {run.dir});
}
