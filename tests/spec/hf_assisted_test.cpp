// Drafter interop with transformers: a tiny target and a smaller drafter (same tokenizer, other
// width and depth), both trained by `anvil train` and exported by `anvil convert --to hf`, run
// transformers' assisted generation (model.generate(..., assistant_model=drafter,
// do_sample=False)); its greedy tokens equal the target's plain greedy generate() in anvil,
// transformers' own plain greedy, and anvil's speculative decoder with the same drafter
// (speculative_generate with an LMDrafter, at gamma 2 and 5).
// The drafter agrees with the target on some next tokens and not on others (checked), so both
// accepted and rejected draft tokens happen.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "data/token_store.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "eval/speculative.h"
#include "models/hf_convert.h"
#include "tests/support/hf_oracle.h"
#include "tests/support/reference.h"
#include "tests/support/tiny_run.h"
#include "trainer/load_model.h"

using namespace anvil;
using namespace anvil::testing;
namespace fs = std::filesystem;

namespace {
const std::string kAnvil = ANVIL_BINARY;

// tests/spec/hf_assisted.py with Debian's torch and the pinned transformers; returns its output.
void run_assisted(const std::string& args) {
  const std::string pydeps = ANVIL_HF_PYDEPS;
  ASSERT_TRUE(fs::exists(pydeps + "/transformers/__init__.py"))
      << "transformers is not installed in " << pydeps << " — run `make deps` (scripts/install_deps.sh)";
  std::string output;
  const int rc = run_command("PYTHONPATH=" + pydeps + " " + std::string(ANVIL_TORCH_PYTHON) + " " +
                                 source_path("tests/spec/hf_assisted.py") + " " + args,
                             output);
  ASSERT_EQ(rc, 0) << "hf_assisted.py failed:\n" << output;
}
}  // namespace

TEST(HfAssisted, ExportedDrafterAsAssistantModelGivesTheTargetsGreedyTokens) {
  const auto run = make_tiny_run("hf_assisted");
  // A target trained far enough that greedy decoding leaves the run of spaces of an untrained model.
  must_run(kAnvil + " train " + run.config + " --set training.steps=300 --set training.grad_accum_steps=1 "
           "--set optimizer.lr=5e-3 --set training.eval_every=0");
  must_run(kAnvil + " train " + run.config + " --set run.out_dir=" + run.dir + "/drafter --set model.hidden_size=16 "
           "--set model.num_hidden_layers=1 --set model.intermediate_size=32 --set training.steps=200 "
           "--set training.grad_accum_steps=1 --set optimizer.lr=5e-3 --set training.eval_every=0");
  const std::string target_hf = run.dir + "/target_hf", drafter_hf = run.dir + "/drafter_hf";
  must_run(kAnvil + " convert --from " + run.dir + "/run --to hf " + target_hf);
  must_run(kAnvil + " convert --from " + run.dir + "/drafter --to hf " + drafter_hf);

  // Prompts: the starts of three corpus documents, of different lengths.
  const TokenStore corpus = TokenStore::open(run.store);
  std::vector<std::vector<int32_t>> prompts;
  for (const int64_t length : {5, 9, 14}) {
    for (int64_t d = int64_t(prompts.size()) * 7; d < corpus.num_documents(); ++d) {
      const std::vector<int32_t> doc = corpus.document(d);
      if (int64_t(doc.size()) > length) {
        prompts.emplace_back(doc.begin(), doc.begin() + length);
        break;
      }
    }
  }
  ASSERT_EQ(prompts.size(), 3u);
  const int max_new = 24;
  const std::string prompts_json = run.dir + "/prompts.json", out_json = run.dir + "/assisted.json";
  std::ofstream(prompts_json) << nlohmann::json(prompts).dump();
  ASSERT_NO_FATAL_FAILURE(run_assisted(target_hf + " " + drafter_hf + " " + prompts_json + " " +
                                       std::to_string(max_new) + " " + out_json));
  nlohmann::json theirs;
  std::ifstream(out_json) >> theirs;

  LoadModelOptions cpu;
  cpu.overrides = {"run.device=cpu", "run.precision=fp32"};
  const LoadedModel target = load_model(run.dir + "/run", cpu);
  const LoadedModel drafter = load_model(run.dir + "/drafter", cpu);
  ASSERT_EQ(drafter.model->config().vocab_size, target.model->config().vocab_size);
  ASSERT_LT(drafter.model->config().hidden_size, target.model->config().hidden_size);
  const int32_t eos = corpus.info().eos_id;
  const auto ours = generate(*target.model, prompts, max_new, SamplingConfig::greedy(), eos);
  LMDrafter drafter_of_ours(*drafter.model);
  for (const int gamma : {2, 5}) {
    SCOPED_TRACE("anvil speculative, gamma " + std::to_string(gamma));
    const SpeculativeResult spec =
        speculative_generate(*target.model, drafter_of_ours, prompts, max_new, SamplingConfig::greedy(), gamma, eos);
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(theirs["assisted"][i].get<std::vector<int32_t>>(), spec.tokens[i]) << "prompt " << i;
    }
  }

  std::set<int32_t> distinct;
  int agree = 0, total = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i));
    EXPECT_EQ(theirs["assisted"][i].get<std::vector<int32_t>>(), ours[i]);
    EXPECT_EQ(theirs["plain"][i].get<std::vector<int32_t>>(), ours[i]);
    // The drafter's greedy next token after each prefix of the target's output.
    distinct.insert(ours[i].begin(), ours[i].end());
    std::vector<int32_t> prefix = prompts[i];
    for (const int32_t next : ours[i]) {
      agree += generate(*drafter.model, {prefix}, 1, SamplingConfig::greedy())[0][0] == next;
      ++total;
      prefix.push_back(next);
    }
  }
  EXPECT_GE(distinct.size(), 10u) << "degenerate continuations prove little";
  std::printf("drafter agrees with the target's greedy token at %d of %d positions\n", agree, total);
  EXPECT_GT(agree, 0) << "the drafter never agrees: no draft token would be accepted";
  EXPECT_LT(agree, total) << "the drafter always agrees: no draft token would be rejected";
}
