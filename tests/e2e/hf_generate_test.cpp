// Train -> export -> transformers.generate: a tiny Llama trained a few steps by `anvil train`,
// exported by `anvil convert --from RUN --to hf DIR`, generates in transformers (the tokenizer
// loaded by AutoTokenizer from the exported tokenizer.json + tokenizer_config.json, greedy
// model.generate) exactly the tokens and text `anvil generate --temperature 0` produces.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "data/tokenizer.h"
#include "eval/generate.h"
#include "models/hf_convert.h"
#include "models/transformer.h"
#include "tests/support/hf_oracle.h"
#include "tests/support/tiny_run.h"

using namespace anvil;
using namespace anvil::testing;
namespace fs = std::filesystem;

namespace {
const std::string kAnvil = ANVIL_BINARY;
}  // namespace

TEST(HfGenerate, TrainedModelGeneratesTheSameGreedyTokensInTransformers) {
  const auto run = make_tiny_run("hf_generate");
  // Enough training (~20 s) that greedy decoding leaves the run of spaces an untrained model emits.
  must_run(kAnvil + " train " + run.config + " --set training.steps=300 --set training.grad_accum_steps=1 "
           "--set optimizer.lr=5e-3 --set training.eval_every=0");
  const std::string hf = run.dir + "/hf";
  must_run(kAnvil + " convert --from " + run.dir + "/run --to hf " + hf);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
    ASSERT_TRUE(fs::exists(hf + "/" + f)) << f;

  const std::string prompt = "The GNU General";
  const int max_new = 24;
  const std::string out_json = run.dir + "/hf_generate.json";
  ASSERT_NO_FATAL_FAILURE(run_hf_oracle("generate " + hf + " " + shell_quote(prompt) + " " + std::to_string(max_new) +
                                        " " + out_json));
  nlohmann::json theirs;
  std::ifstream(out_json) >> theirs;
  EXPECT_EQ(theirs["tokenizer_class"], "PreTrainedTokenizerFast");

  // The same prompt tokens from both tokenizers.
  const Tokenizer tok = Tokenizer::load(hf + "/tokenizer.json");
  const std::vector<int32_t> prompt_ids = tok.encode(prompt);
  EXPECT_EQ(theirs["prompt_ids"].get<std::vector<int32_t>>(), prompt_ids);

  // The same new tokens as anvil's greedy decoding of the exported weights (stopping at <|endoftext|>).
  const ModelConfig config = read_hf_config(hf);
  TransformerLM model(config);
  load_hf_weights(model, SafetensorsIndex::open(hf));
  const auto eos = tok.token_to_id(kHfEosToken);
  ASSERT_TRUE(eos.has_value());
  const auto ours = generate(model, {prompt_ids}, max_new, SamplingConfig::greedy(), eos);
  const auto their_ids = theirs["new_ids"].get<std::vector<int32_t>>();
  EXPECT_EQ(their_ids, ours[0]);
  // A varied continuation, so that a wrong weight or mask would change some argmax.
  const std::set<int32_t> distinct(their_ids.begin(), their_ids.end());
  EXPECT_GE(distinct.size(), 6u) << "a degenerate continuation proves little: " << theirs["new_text"];

  // And `anvil generate` on the trained run prints the prompt plus transformers' decoded text.
  const std::string printed =
      must_run(kAnvil + " generate --checkpoint " + run.dir + "/run --prompt " + shell_quote(prompt) +
               " --max-tokens " + std::to_string(max_new) + " --temperature 0");
  EXPECT_EQ(printed, prompt + theirs["new_text"].get<std::string>() + "\n");
  std::printf("transformers and anvil generate %zu identical greedy tokens: %s\n", their_ids.size(),
              printed.c_str());
}
