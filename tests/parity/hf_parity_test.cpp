// Parity with Hugging Face transformers (tests/parity/hf_oracle.py, run with Debian's torch and
// the pinned transformers that scripts/install_deps.sh puts in ANVIL_HF_PYDEPS), for every model
// type anvil loads: GPT-2, Llama (GQA, tied/untied, biases, linear and Llama-3 rope_scaling),
// Qwen2 (q/k/v biases) and Mistral (a sliding window shorter than the test sequence). A small model
// built and randomly initialised by transformers, saved with save_pretrained, loads into anvil and
// gives transformers' logits (fp32, max|diff| / max|ref| <= 1e-5) both from the full forward and
// from KV-cached decoding; anvil's save_hf output loads back into transformers and gives the same
// logits again. Where a config field is the point of a case (rope_scaling, sliding_window), the
// model without it must give clearly different logits, so the case cannot pass by ignoring it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "data/safetensors.h"
#include "data/tokenizer.h"
#include "models/hf_convert.h"
#include "models/transformer.h"
#include "tests/support/hf_oracle.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;
namespace fs = std::filesystem;

namespace {

Tensor read_tensor(const std::string& path, const std::string& name) {
  return SafetensorsFile::open(path).tensor(name).clone();
}

Tensor anvil_logits(TransformerLM& model, const Tensor& ids) {
  Cache cache;
  return model.forward(ids, cache).clone();
}

// The logits of KV-cached decoding: the first half of each sequence as one prefill, then one
// position at a time, concatenated along the sequence.
Tensor cached_logits(TransformerLM& model, const Tensor& ids) {
  const int64_t B = ids.size(0), T = ids.size(1), V = model.config().vocab_size;
  KVCache kv(model.config(), B, T);
  Tensor out = Tensor::empty({B, T, V});
  const int64_t prefill = T / 2;
  out.slice(1, 0, prefill).copy_(model.forward_cached(ids.slice(1, 0, prefill).contiguous(), kv));
  for (int64_t t = prefill; t < T; ++t)
    out.slice(1, t, t + 1).copy_(model.forward_cached(ids.slice(1, t, t + 1).contiguous(), kv));
  return out;
}

struct Case {
  std::string tag;
  nlohmann::json hf;  // fields for AutoConfig.for_model (model_type included)
  int64_t batch = 2, seq_len = 13;
  uint64_t shard_bytes = 0;  // > 0: save_pretrained shards the checkpoint
  // The field under test turned off (e.g. rope_scaling none): the logits must then move away.
  std::function<void(ModelConfig&)> without_feature;
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
  ASSERT_NO_FATAL_FAILURE(run_hf_oracle(args));
  if (c.shard_bytes) ASSERT_TRUE(fs::exists(hf_dir + "/model.safetensors.index.json")) << "expected a sharded save";

  // transformers -> anvil
  const ModelConfig mc = read_hf_config(hf_dir);
  EXPECT_EQ(mc.model_type, c.hf.at("model_type").get<std::string>());
  TransformerLM model(mc);
  model.init_weights(99);  // overwritten: every param must come from the file
  load_hf_weights(model, SafetensorsIndex::open(hf_dir));
  const Tensor logits = anvil_logits(model, ids);
  const Tensor ref = read_tensor(ref_path, "logits");
  ASSERT_EQ(logits.shape(), ref.shape());
  const double err_in = max_rel_diff(logits, ref);
  EXPECT_LE(err_in, 1e-5) << c.tag << ": anvil loading transformers' checkpoint";
  EXPECT_GT(max_abs_diff(ref, Tensor::zeros(ref.shape())), 1.0) << c.tag << ": logits should not be near zero";
  const double err_cached = max_rel_diff(cached_logits(model, ids), ref);
  EXPECT_LE(err_cached, 1e-5) << c.tag << ": anvil's KV-cached decoding";

  double err_without = -1;
  if (c.without_feature) {
    ModelConfig plain = mc;
    c.without_feature(plain);
    TransformerLM ablated(plain);
    load_hf_weights(ablated, SafetensorsIndex::open(hf_dir));
    err_without = max_rel_diff(anvil_logits(ablated, ids), ref);
    EXPECT_GT(err_without, 1e-3) << c.tag << ": the field under test does not change these logits";
  }

  // bf16 checkpoint: every weight is the f32 weight rounded to bf16, exactly.
  TransformerLM half(read_hf_config(bf16_dir));
  EXPECT_EQ(half.config().to_json(), mc.to_json()) << c.tag << " bf16 config.json";
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
  ASSERT_NO_FATAL_FAILURE(run_hf_oracle("logits " + out_dir + " " + ids_path + " " + ref2_path));
  const Tensor ref2 = read_tensor(ref2_path, "logits");
  const double err_out = max_rel_diff(logits, ref2);
  EXPECT_LE(err_out, 1e-5) << c.tag << ": transformers loading anvil's export";
  EXPECT_EQ(Tokenizer::load(out_dir + "/tokenizer.json").hash(), tok.hash()) << c.tag << " tokenizer.json";

  // anvil -> anvil: the same config and bit-exact weights.
  TransformerLM again(read_hf_config(out_dir));
  EXPECT_EQ(again.config().to_json(), mc.to_json()) << c.tag << " exported config.json";
  load_hf_weights(again, SafetensorsIndex::open(out_dir));
  const auto again_params = again.params();
  ASSERT_EQ(again_params.size(), full_params.size());
  for (size_t i = 0; i < full_params.size(); ++i)
    EXPECT_EQ(max_abs_diff(again_params[i]->value, full_params[i]->value), 0.0) << c.tag << " " << full_params[i]->name;

  std::printf("%s: %zu params; logits rel err, transformers checkpoint in anvil %.2e (KV-cached %.2e); anvil export "
              "in transformers %.2e", c.tag.c_str(), full_params.size(), err_in, err_cached, err_out);
  if (c.without_feature) std::printf("; without the field under test %.2e", err_without);
  std::printf("\n");
}

nlohmann::json llama_fields(int32_t vocab, int64_t hidden, int64_t heads, int64_t kv_heads, int64_t max_positions) {
  return {{"model_type", "llama"}, {"vocab_size", vocab}, {"hidden_size", hidden}, {"num_hidden_layers", 2},
          {"num_attention_heads", heads}, {"num_key_value_heads", kv_heads}, {"intermediate_size", 96},
          {"max_position_embeddings", max_positions}, {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}};
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
  nlohmann::json f = llama_fields(307, 64, 8, 2, 64);
  f["rope_theta"] = 500000.0;
  check_case({"llama_gqa", f, 2, 19});
}

TEST(HfParity, LlamaTiedShardedWithBias) {
  check_case({"llama_tied",
              {{"model_type", "llama"}, {"vocab_size", 283}, {"hidden_size", 48}, {"num_hidden_layers", 2},
               {"num_attention_heads", 4}, {"num_key_value_heads", 4}, {"intermediate_size", 80},
               {"max_position_embeddings", 32}, {"tie_word_embeddings", true}, {"attention_bias", true}},
              2, 11, 30000});
}

// transformers 4.38 runs linear scaling itself (LlamaLinearScalingRotaryEmbedding).
TEST(HfParity, LlamaRopeScalingLinear) {
  nlohmann::json f = llama_fields(263, 64, 4, 2, 64);
  f["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  check_case({"llama_rope_linear", f, 2, 30, 0, [](ModelConfig& m) { m.rope_scaling = RopeScaling(); }});
}

// Llama 3.1's scaling; transformers 4.38 predates it, so the oracle rescales the inverse frequencies of
// its LlamaRotaryEmbedding modules with the published formula (see hf_oracle.py). head_dim 16 with
// theta 1e4 gives wavelengths 6.3 (kept: < 64 / 4), 20 and 63 (blended) and 199 .. 19869 (divided by
// factor: > 64 / 1), so all three bands of the formula are exercised.
TEST(HfParity, LlamaRopeScalingLlama3) {
  nlohmann::json f = llama_fields(263, 64, 4, 2, 64);
  f["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 64}};
  check_case({"llama3_rope", f, 2, 40, 0, [](ModelConfig& m) { m.rope_scaling = RopeScaling(); }});
}

TEST(HfParity, Qwen2QkvBiasUntied) {
  nlohmann::json f = llama_fields(311, 64, 4, 2, 64);
  f["model_type"] = "qwen2";
  f["rope_theta"] = 1000000.0;
  check_case({"qwen2", f, 2, 15});
}

TEST(HfParity, Qwen2TiedSharded) {
  nlohmann::json f = llama_fields(257, 48, 4, 1, 32);
  f["model_type"] = "qwen2";
  f["tie_word_embeddings"] = true;
  check_case({"qwen2_tied", f, 1, 12, 30000});
}

// A window of 6 positions on sequences of 19: most queries lose some of their context.
TEST(HfParity, MistralSlidingWindow) {
  nlohmann::json f = llama_fields(269, 64, 8, 2, 64);
  f["model_type"] = "mistral";
  f["sliding_window"] = 6;
  check_case({"mistral_window", f, 2, 19, 0, [](ModelConfig& m) { m.sliding_window = 0; }});
}
