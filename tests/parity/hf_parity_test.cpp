// Parity with Hugging Face transformers (tests/parity/hf_oracle.py, run with Debian's torch and
// the pinned transformers that scripts/install_deps.sh puts in ANVIL_HF_PYDEPS): a small model
// built and randomly initialised by transformers, saved with save_pretrained, loads into anvil
// and gives transformers' logits (fp32, max|diff| / max|ref| <= 1e-5); anvil's save_hf output
// loads back into transformers and gives the same logits again.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/safetensors.h"
#include "data/tokenizer.h"
#include "models/hf_convert.h"
#include "models/transformer.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;
namespace fs = std::filesystem;

namespace {

// Runs the oracle with transformers on PYTHONPATH; fails the test with the script's output.
void run_oracle(const std::string& args) {
  const std::string pydeps = ANVIL_HF_PYDEPS;
  ASSERT_TRUE(fs::exists(pydeps + "/transformers/__init__.py"))
      << "transformers is not installed in " << pydeps << " — run `make deps` (scripts/install_deps.sh)";
  const std::string cmd = "PYTHONPATH=" + pydeps + " HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 " +
                          std::string(ANVIL_TORCH_PYTHON) + " " + source_path("tests/parity/hf_oracle.py") + " " +
                          args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr) << cmd;
  std::string output;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) output.append(buf, n);
  ASSERT_EQ(pclose(pipe), 0) << "oracle failed: " << cmd << "\n" << output;
}

Tensor read_tensor(const std::string& path, const std::string& name) {
  return SafetensorsFile::open(path).tensor(name).clone();
}

Tensor anvil_logits(TransformerLM& model, const Tensor& ids) {
  Cache cache;
  return model.forward(ids, cache).clone();
}

struct Case {
  std::string tag;
  nlohmann::json hf;  // fields for AutoConfig.for_model (model_type included)
  int64_t batch = 2, seq_len = 13;
  uint64_t shard_bytes = 0;  // > 0: save_pretrained shards the checkpoint
};

void check_case(const Case& c) {
  const std::string dir = ::testing::TempDir() + "/hf_parity_" + c.tag;
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string config = dir + "/fields.json", ids_path = dir + "/ids.safetensors";
  const std::string hf_dir = dir + "/hf", bf16_dir = dir + "/hf_bf16", ref_path = dir + "/ref.safetensors";
  std::ofstream(config) << c.hf.dump();
  const int32_t vocab = c.hf.at("vocab_size").get<int32_t>();
  const Tensor ids = random_ids({c.batch, c.seq_len}, vocab, 21);
  write_safetensors(ids_path, {{"ids", ids}});
  std::string args = "make " + config + " " + ids_path + " " + hf_dir + " " + ref_path + " --bf16-dir " + bf16_dir;
  if (c.shard_bytes) args += " --shard-bytes " + std::to_string(c.shard_bytes);
  ASSERT_NO_FATAL_FAILURE(run_oracle(args));
  if (c.shard_bytes) ASSERT_TRUE(fs::exists(hf_dir + "/model.safetensors.index.json")) << "expected a sharded save";

  // transformers -> anvil
  const ModelConfig mc = read_hf_config(hf_dir);
  TransformerLM model(mc);
  model.init_weights(99);  // overwritten: every param must come from the file
  load_hf_weights(model, SafetensorsIndex::open(hf_dir));
  const Tensor logits = anvil_logits(model, ids);
  const Tensor ref = read_tensor(ref_path, "logits");
  ASSERT_EQ(logits.shape(), ref.shape());
  const double err_in = max_rel_diff(logits, ref);
  EXPECT_LE(err_in, 1e-5) << c.tag << ": anvil loading transformers' checkpoint";
  EXPECT_GT(max_abs_diff(ref, Tensor::zeros(ref.shape())), 1.0) << c.tag << ": logits should not be near zero";

  // bf16 checkpoint: every weight is the f32 weight rounded to bf16, exactly.
  TransformerLM half(read_hf_config(bf16_dir));
  load_hf_weights(half, SafetensorsIndex::open(bf16_dir));
  const auto full_params = model.params(), half_params = half.params();
  for (size_t i = 0; i < full_params.size(); ++i) {
    const Tensor rounded = full_params[i]->value.to(DType::BF16).to(DType::F32);
    EXPECT_EQ(max_abs_diff(half_params[i]->value, rounded), 0.0) << c.tag << " bf16 " << full_params[i]->name;
  }

  // anvil -> transformers, with a tokenizer
  const Tokenizer tok = Tokenizer::train({"the cat sat on the mat", "the dog sat on the log"}, 280, 1,
                                         {"<|endoftext|>"});
  const std::string out_dir = dir + "/exported", ref2_path = dir + "/ref2.safetensors";
  save_hf(model, &tok, out_dir);
  ASSERT_NO_FATAL_FAILURE(run_oracle("logits " + out_dir + " " + ids_path + " " + ref2_path));
  const Tensor ref2 = read_tensor(ref2_path, "logits");
  const double err_out = max_rel_diff(logits, ref2);
  EXPECT_LE(err_out, 1e-5) << c.tag << ": transformers loading anvil's export";
  // The tokenizer goes out as Tokenizer::save writes it (its HF compatibility is
  // tokenizer_parity_test's subject; transformers 4.38's tokenizers 0.15 predates its merge format).
  EXPECT_EQ(Tokenizer::load(out_dir + "/tokenizer.json").hash(), tok.hash()) << c.tag << " tokenizer.json";

  // anvil -> anvil: bit-exact weights.
  TransformerLM again(read_hf_config(out_dir));
  load_hf_weights(again, SafetensorsIndex::open(out_dir));
  const auto again_params = again.params();
  ASSERT_EQ(again_params.size(), full_params.size());
  for (size_t i = 0; i < full_params.size(); ++i)
    EXPECT_EQ(max_abs_diff(again_params[i]->value, full_params[i]->value), 0.0) << c.tag << " " << full_params[i]->name;

  std::printf("%s: %zu params; logits rel err, transformers checkpoint in anvil %.2e; anvil export in "
              "transformers %.2e\n", c.tag.c_str(), full_params.size(), err_in, err_out);
}

}  // namespace

TEST(HfParity, Gpt2) {
  check_case({"gpt2",
              {{"model_type", "gpt2"}, {"vocab_size", 301}, {"n_embd", 48}, {"n_layer", 2}, {"n_head", 4},
               {"n_positions", 32}, {"layer_norm_epsilon", 1e-5}},
              2, 17});
}

TEST(HfParity, Gpt2UntiedSharded) {
  check_case({"gpt2_untied",
              {{"model_type", "gpt2"}, {"vocab_size", 290}, {"n_embd", 32}, {"n_layer", 3}, {"n_head", 2},
               {"n_inner", 80}, {"n_positions", 16}, {"tie_word_embeddings", false}},
              1, 16, 40000});
}

TEST(HfParity, LlamaGqaUntied) {
  check_case({"llama_gqa",
              {{"model_type", "llama"}, {"vocab_size", 307}, {"hidden_size", 64}, {"num_hidden_layers", 2},
               {"num_attention_heads", 8}, {"num_key_value_heads", 2}, {"intermediate_size", 96},
               {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-5}, {"rope_theta", 500000.0},
               {"tie_word_embeddings", false}},
              2, 19});
}

TEST(HfParity, LlamaTiedShardedWithBias) {
  check_case({"llama_tied",
              {{"model_type", "llama"}, {"vocab_size", 283}, {"hidden_size", 48}, {"num_hidden_layers", 2},
               {"num_attention_heads", 4}, {"num_key_value_heads", 4}, {"intermediate_size", 80},
               {"max_position_embeddings", 32}, {"tie_word_embeddings", true}, {"attention_bias", true}},
              2, 11, 30000});
}
