// models/hf_convert: the layout anvil writes, exact round trips, and every malformed input an
// error that names the file, the tensor or field and the value. (Logit parity with transformers
// is tests/parity/hf_parity_test.cpp.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "data/safetensors.h"
#include "data/tokenizer.h"
#include "models/hf_convert.h"
#include "models/transformer.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;
namespace fs = std::filesystem;

#define EXPECT_HAS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << "missing: " << (needle) << "\nin: " << (haystack)

namespace {

ModelConfig tiny_gpt2() {
  ModelConfig c = ModelConfig::gpt2();
  c.vocab_size = 300;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = c.num_key_value_heads = 4;
  c.intermediate_size = 96;
  c.max_position_embeddings = 24;
  return c;
}

ModelConfig tiny_llama(bool tied) {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 300;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 48;
  c.max_position_embeddings = 24;
  c.tie_word_embeddings = tied;
  return c;
}

std::unique_ptr<TransformerLM> random_model(const ModelConfig& c) {
  auto m = std::make_unique<TransformerLM>(c);
  m->init_weights(3);
  randomize_params(m->params());
  return m;
}

std::string fresh_dir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/hf_convert_" + name;
  fs::remove_all(dir);
  return dir;
}

TensorMap read_all(const std::string& dir) {
  const SafetensorsIndex index = SafetensorsIndex::open(dir);
  TensorMap out;
  for (const auto& name : index.names()) out[name] = index.tensor(name).clone();
  return out;
}

void rewrite(const std::string& dir, const TensorMap& tensors) {
  write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
}

nlohmann::json read_json(const std::string& path) {
  nlohmann::json j;
  std::ifstream(path) >> j;
  return j;
}

void write_json(const std::string& path, const nlohmann::json& j) { std::ofstream(path) << j.dump(2); }

std::string load_error(const std::string& dir) {
  return error_of([&] {
    TransformerLM m(read_hf_config(dir));
    load_hf_weights(m, SafetensorsIndex::open(dir));
  });
}

}  // namespace

TEST(HfConvert, Gpt2WritesHuggingFaceLayout) {
  const auto model = random_model(tiny_gpt2());
  const std::string dir = fresh_dir("gpt2_layout");
  const Tokenizer tok;
  save_hf(*model, &tok, dir);
  ASSERT_TRUE(fs::exists(dir + "/model.safetensors"));
  ASSERT_TRUE(fs::exists(dir + "/tokenizer.json"));
  const nlohmann::json cfg = read_json(dir + "/config.json");
  EXPECT_EQ(cfg.at("model_type"), "gpt2");
  EXPECT_EQ(cfg.at("architectures"), nlohmann::json::array({"GPT2LMHeadModel"}));
  EXPECT_EQ(cfg.at("torch_dtype"), "float32");
  EXPECT_EQ(cfg.at("n_embd"), 32);
  EXPECT_EQ(cfg.at("n_inner"), 96);

  const SafetensorsFile f = SafetensorsFile::open(dir + "/model.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_FALSE(f.contains("lm_head.weight")) << "a tied head is written once, as the embedding";
  // Conv1D: [in, out] in the file, the transpose of anvil's [out, in].
  const Tensor w = model->param("transformer.h.1.attn.c_attn.weight").value;
  EXPECT_EQ(f.info("transformer.h.1.attn.c_attn.weight").shape, (Shape{32, 96}));
  EXPECT_EQ(max_abs_diff(f.get_f32("transformer.h.1.attn.c_attn.weight"), w.transpose(0, 1).contiguous()), 0.0);
  EXPECT_EQ(f.info("transformer.h.0.mlp.c_fc.weight").shape, (Shape{32, 96}));
  EXPECT_EQ(f.info("transformer.h.0.mlp.c_proj.weight").shape, (Shape{96, 32}));
  EXPECT_EQ(f.names().size(), model->params().size());

  TransformerLM back(read_hf_config(dir));
  load_hf_weights(back, SafetensorsIndex::open(dir));
  for (Param* p : model->params()) EXPECT_EQ(max_abs_diff(back.param(p->name).value, p->value), 0.0) << p->name;
}

TEST(HfConvert, LlamaRoundTripsTiedAndUntied) {
  for (bool tied : {false, true}) {
    const auto model = random_model(tiny_llama(tied));
    const std::string dir = fresh_dir(tied ? "llama_tied" : "llama_untied");
    save_hf(*model, nullptr, dir);
    EXPECT_FALSE(fs::exists(dir + "/tokenizer.json"));
    const nlohmann::json cfg = read_json(dir + "/config.json");
    EXPECT_EQ(cfg.at("architectures"), nlohmann::json::array({"LlamaForCausalLM"}));
    EXPECT_EQ(cfg.at("num_key_value_heads"), 2);
    EXPECT_EQ(cfg.at("tie_word_embeddings"), tied);
    EXPECT_EQ(SafetensorsFile::open(dir + "/model.safetensors").contains("lm_head.weight"), !tied);
    const ModelConfig c = read_hf_config(dir);
    EXPECT_EQ(c.to_json(), model->config().to_json());
    TransformerLM back(c);
    load_hf_weights(back, SafetensorsIndex::open(dir));
    for (Param* p : model->params()) EXPECT_EQ(max_abs_diff(back.param(p->name).value, p->value), 0.0) << p->name;
  }
}

// Qwen2 and Mistral as thin Llama variants, Llama with rope_scaling: architectures, the fields
// transformers reads, the params each has, and exact round trips.
TEST(HfConvert, Qwen2MistralAndRopeScalingRoundTrip) {
  ModelConfig qwen = tiny_llama(false);
  qwen.model_type = "qwen2";
  ModelConfig mistral = tiny_llama(true);
  mistral.model_type = "mistral";
  mistral.sliding_window = 5;
  ModelConfig llama3 = tiny_llama(false);
  llama3.rope_scaling.type = "llama3";
  llama3.rope_scaling.factor = 8.0;
  llama3.rope_scaling.original_max_position_embeddings = 16;
  ModelConfig linear = tiny_llama(true);
  linear.rope_scaling.type = "linear";
  linear.rope_scaling.factor = 2.5;
  const Tokenizer tok = Tokenizer::train({"a b c abc"}, 270, 1, {"<|endoftext|>"});
  std::map<std::string, nlohmann::json> written;  // config.json by case
  for (const ModelConfig& c : {qwen, mistral, llama3, linear}) {
    const auto model = random_model(c);
    const std::string tag = c.model_type + "_" + c.rope_scaling.type, dir = fresh_dir(tag);
    save_hf(*model, &tok, dir);
    const nlohmann::json cfg = written[tag] = read_json(dir + "/config.json");
    EXPECT_EQ(cfg.at("model_type"), c.model_type);
    EXPECT_EQ(cfg.at("eos_token_id"), *tok.token_to_id("<|endoftext|>"));
    EXPECT_EQ(cfg.at("bos_token_id"), *tok.token_to_id("<|endoftext|>"));
    EXPECT_EQ(read_json(dir + "/tokenizer_config.json").at("tokenizer_class"), "PreTrainedTokenizerFast");
    const ModelConfig back_config = read_hf_config(dir);
    EXPECT_EQ(back_config.to_json(), c.to_json());
    EXPECT_TRUE(back_config.rope_scaling == c.rope_scaling);
    EXPECT_EQ(back_config.sliding_window, c.sliding_window);
    TransformerLM back(back_config);
    load_hf_weights(back, SafetensorsIndex::open(dir));
    for (Param* p : model->params()) EXPECT_EQ(max_abs_diff(back.param(p->name).value, p->value), 0.0) << p->name;
  }
  const nlohmann::json& q = written.at("qwen2_none");
  EXPECT_EQ(q.at("architectures"), nlohmann::json::array({"Qwen2ForCausalLM"}));
  EXPECT_EQ(q.at("use_sliding_window"), false);
  EXPECT_FALSE(q.contains("attention_bias"));
  const nlohmann::json& m = written.at("mistral_none");
  EXPECT_EQ(m.at("architectures"), nlohmann::json::array({"MistralForCausalLM"}));
  EXPECT_EQ(m.at("sliding_window"), 5);
  const nlohmann::json& l = written.at("llama_llama3");
  EXPECT_EQ(l.at("rope_scaling").at("rope_type"), "llama3");
  EXPECT_EQ(l.at("rope_scaling").at("original_max_position_embeddings"), 16);
  EXPECT_EQ(written.at("llama_linear").at("rope_scaling"), (nlohmann::json{{"type", "linear"}, {"factor", 2.5}}));

  // Qwen2: q/k/v biases and no o_proj bias; Mistral: no biases.
  TransformerLM qm(qwen);
  for (const char* name : {"q_proj", "k_proj", "v_proj"})
    EXPECT_NO_THROW(qm.param(std::string("model.layers.0.self_attn.") + name + ".bias")) << name;
  EXPECT_THROW(qm.param("model.layers.0.self_attn.o_proj.bias"), Error);
  TransformerLM mm(mistral);
  for (Param* p : mm.params()) EXPECT_EQ(p->name.find(".bias"), std::string::npos) << p->name;
}

TEST(HfConvert, VariantFieldsAreValidated) {
  ModelConfig c = tiny_llama(false);
  c.sliding_window = 8;
  EXPECT_NE(error_of([&] { c.validate(); }).find("sliding_window = 8 is set but model_type 'llama'"), std::string::npos);
  c.model_type = "mistral";
  EXPECT_EQ(error_of([&] { c.validate(); }), "(no error)");
  c.sliding_window = -1;
  EXPECT_NE(error_of([&] { c.validate(); }).find("sliding_window = -1 must be >= 0"), std::string::npos);
  c = tiny_llama(false);
  c.model_type = "qwen2";
  c.attention_bias = true;
  EXPECT_NE(error_of([&] { c.validate(); }).find("qwen2 always has q/k/v biases and no o_proj bias"), std::string::npos);
  c = tiny_gpt2();
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 2;
  EXPECT_NE(error_of([&] { c.validate(); }).find("gpt2 has learned positions"), std::string::npos);
  c = tiny_llama(false);
  c.rope_scaling.type = "ntk";
  EXPECT_NE(error_of([&] { c.validate(); }).find("rope_scaling type 'ntk' is not supported"), std::string::npos);
}

TEST(HfConvert, ShardsLikeSavePretrained) {
  const auto model = random_model(tiny_llama(false));
  const std::string dir = fresh_dir("sharded");
  save_hf(*model, nullptr, dir, 20000);
  ASSERT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  TransformerLM back(read_hf_config(dir));
  load_hf_weights(back, SafetensorsIndex::open(dir));
  for (Param* p : model->params()) EXPECT_EQ(max_abs_diff(back.param(p->name).value, p->value), 0.0) << p->name;
}

TEST(HfConvert, ReadsBaseModelNamesBuffersAndHalfPrecision) {
  const auto model = random_model(tiny_gpt2());
  const std::string dir = fresh_dir("variants");
  save_hf(*model, nullptr, dir);
  // As in the original gpt2 checkpoints: no "transformer." prefix, causal-mask buffers; here bf16 too.
  TensorMap t;
  for (auto& [name, v] : read_all(dir)) t[name.substr(std::string("transformer.").size())] = v.to(DType::BF16);
  t["h.0.attn.bias"] = Tensor::full({1, 1, 24, 24}, 1.0);
  t["h.1.attn.masked_bias"] = Tensor::full({}, -1e4);
  rewrite(dir, t);
  TransformerLM back(read_hf_config(dir));
  load_hf_weights(back, SafetensorsIndex::open(dir));
  for (Param* p : model->params())
    EXPECT_EQ(max_abs_diff(back.param(p->name).value, p->value.to(DType::BF16).to(DType::F32)), 0.0) << p->name;

  // f16, and Llama's rotary inv_freq buffer.
  const auto llama = random_model(tiny_llama(false));
  const std::string ldir = fresh_dir("variants_llama");
  save_hf(*llama, nullptr, ldir);
  TensorMap l;
  for (auto& [name, v] : read_all(ldir)) l[name] = v.to(DType::F16);
  l["model.layers.0.self_attn.rotary_emb.inv_freq"] = Tensor::full({4}, 0.5);
  rewrite(ldir, l);
  TransformerLM lback(read_hf_config(ldir));
  load_hf_weights(lback, SafetensorsIndex::open(ldir));
  for (Param* p : llama->params())
    EXPECT_EQ(max_abs_diff(lback.param(p->name).value, p->value.to(DType::F16).to(DType::F32)), 0.0) << p->name;
}

TEST(HfConvert, TiedHeadInTheFileMustEqualTheEmbedding) {
  const auto model = random_model(tiny_llama(true));
  const std::string dir = fresh_dir("tied_head");
  save_hf(*model, nullptr, dir);
  TensorMap t = read_all(dir);
  t["lm_head.weight"] = t.at("model.embed_tokens.weight").clone();
  rewrite(dir, t);
  EXPECT_EQ(load_error(dir), "(no error)");
  t["lm_head.weight"].data<float>()[5] += 1.0f;
  rewrite(dir, t);
  const std::string msg = load_error(dir);
  EXPECT_HAS(msg, dir + "/model.safetensors");
  EXPECT_HAS(msg, "'lm_head.weight' differs from the embedding 'model.embed_tokens.weight'");
  EXPECT_HAS(msg, "tie_word_embeddings");
}

TEST(HfConvert, MissingTensorIsNamed) {
  const auto model = random_model(tiny_llama(false));
  const std::string dir = fresh_dir("missing");
  save_hf(*model, nullptr, dir);
  TensorMap t = read_all(dir);
  t.erase("model.layers.1.mlp.up_proj.weight");
  rewrite(dir, t);
  const std::string msg = load_error(dir);
  EXPECT_HAS(msg, dir + "/model.safetensors");
  EXPECT_HAS(msg, "missing tensor 'model.layers.1.mlp.up_proj.weight'");

  t.erase("lm_head.weight");  // an untied config with no head: the hint says what it means
  rewrite(dir, t);
  EXPECT_HAS(load_error(dir), "set tie_word_embeddings true");
}

TEST(HfConvert, WrongShapeIsNamedWithBothShapes) {
  const auto model = random_model(tiny_gpt2());
  const std::string dir = fresh_dir("shape");
  save_hf(*model, nullptr, dir);
  TensorMap t = read_all(dir);
  // Stored the anvil way round ([out, in]) instead of Conv1D's [in, out].
  t["transformer.h.0.mlp.c_fc.weight"] = model->param("transformer.h.0.mlp.c_fc.weight").value.clone();
  rewrite(dir, t);
  std::string msg = load_error(dir);
  EXPECT_HAS(msg, dir + "/model.safetensors: tensor 'transformer.h.0.mlp.c_fc.weight' has shape [96, 32]");
  EXPECT_HAS(msg, "expects [32, 96] (GPT-2 Conv1D layout [in, out])");

  // Nothing was loaded: a failed load leaves the model as it was.
  TransformerLM fresh(tiny_gpt2());
  fresh.init_weights(5);
  const Tensor before = fresh.param("transformer.wte.weight").value.clone();
  EXPECT_NE(error_of([&] { load_hf_weights(fresh, SafetensorsIndex::open(dir)); }), "(no error)");
  EXPECT_EQ(max_abs_diff(fresh.param("transformer.wte.weight").value, before), 0.0);

  t["transformer.h.0.mlp.c_fc.weight"] = t["transformer.h.0.mlp.c_fc.weight"].transpose(0, 1).contiguous();
  t["transformer.ln_f.bias"] = Tensor::zeros({33});
  rewrite(dir, t);
  msg = load_error(dir);
  EXPECT_HAS(msg, "tensor 'transformer.ln_f.bias' has shape [33] but the model expects [32]");
}

TEST(HfConvert, UnknownTensorIsAnError) {
  const auto model = random_model(tiny_llama(false));
  const std::string dir = fresh_dir("extra");
  save_hf(*model, nullptr, dir);
  TensorMap t = read_all(dir);
  t["score.weight"] = Tensor::zeros({2, 32});
  rewrite(dir, t);
  const std::string msg = load_error(dir);
  EXPECT_HAS(msg, dir + "/model.safetensors: unexpected tensor 'score.weight' [2, 32]");
  EXPECT_HAS(msg, "has no such parameter");
}

TEST(HfConvert, IntegerWeightsAreRejected) {
  const auto model = random_model(tiny_llama(false));
  const std::string dir = fresh_dir("int");
  save_hf(*model, nullptr, dir);
  TensorMap t = read_all(dir);
  t["model.norm.weight"] = Tensor::zeros({32}, DType::I32);
  rewrite(dir, t);
  EXPECT_HAS(load_error(dir), "tensor 'model.norm.weight' has dtype I32 — anvil loads weights stored as F32, BF16 or F16");
}

TEST(HfConvert, UnsupportedConfigFieldsAreNamed) {
  const auto model = random_model(tiny_llama(false));
  const std::string dir = fresh_dir("config");
  save_hf(*model, nullptr, dir);
  const std::string path = dir + "/config.json";
  const nlohmann::json good = read_json(path);
  auto error_with = [&](const char* key, const nlohmann::json& value) {
    nlohmann::json j = good;
    j[key] = value;
    write_json(path, j);
    return error_of([&] { read_hf_config(dir); });
  };
  std::string msg = error_with("model_type", "bert");
  EXPECT_HAS(msg, path + ": unsupported field value model_type = \"bert\"");
  msg = error_with("model_type", "mixtral");
  EXPECT_HAS(msg, "model_type = \"mixtral\"");
  EXPECT_HAS(msg, "anvil loads 'gpt2', 'llama', 'qwen2' and 'mistral' checkpoints");
  // rope_scaling: linear and llama3 are implemented, every other type or field is named.
  EXPECT_EQ(error_with("rope_scaling", {{"type", "linear"}, {"factor", 2.0}}), "(no error)");
  EXPECT_EQ(read_hf_config(dir).rope_scaling.type, "linear");
  const nlohmann::json llama3 = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                 {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  EXPECT_EQ(error_with("rope_scaling", llama3), "(no error)");
  EXPECT_EQ(read_hf_config(dir).rope_scaling.to_json(), llama3);
  msg = error_with("rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}});
  EXPECT_HAS(msg, path + ": unsupported field value rope_scaling = {\"factor\":2.0,\"type\":\"dynamic\"}");
  EXPECT_HAS(msg, "'dynamic' is not implemented");
  EXPECT_HAS(error_with("rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}), "'yarn' is not implemented");
  EXPECT_HAS(error_with("rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}),
             "llama3 scaling needs 'low_freq_factor'");
  nlohmann::json extra = llama3;
  extra["attention_factor"] = 1.0;
  EXPECT_HAS(error_with("rope_scaling", extra), "'attention_factor' is not a field of llama3 scaling");
  EXPECT_HAS(error_with("rope_scaling", {{"type", "linear"}, {"rope_type", "llama3"}, {"factor", 2.0}}),
             "'rope_type' and 'type' disagree");
  EXPECT_HAS(error_with("rope_scaling", {{"type", "linear"}, {"factor", -2.0}}), "factor = -2 must be positive");
  nlohmann::json inverted = llama3;
  inverted["high_freq_factor"] = 0.5;
  EXPECT_HAS(error_with("rope_scaling", inverted), "high_freq_factor = 0.5 must exceed low_freq_factor = 1");
  EXPECT_HAS(error_with("rope_scaling", "linear"), "unsupported field value rope_scaling = \"linear\"");
  EXPECT_EQ(error_with("rope_scaling", {{"rope_type", "default"}}), "(no error)");
  EXPECT_EQ(error_with("rope_scaling", nullptr), "(no error)");
  msg = error_with("sliding_window", 4096);
  EXPECT_HAS(msg, path + ": unsupported field value sliding_window = 4096");
  EXPECT_HAS(msg, "model_type 'mistral'");
  EXPECT_EQ(error_with("sliding_window", nullptr), "(no error)");
  msg = error_with("hidden_act", "gelu");
  EXPECT_HAS(msg, "hidden_act 'gelu' is not supported for llama");
  msg = error_with("attention_dropout", 0.1);
  EXPECT_HAS(msg, "attention_dropout = 0.1");
  write_json(path, nlohmann::json{{"vocab_size", 10}});
  EXPECT_HAS(error_of([&] { read_hf_config(dir); }), path + ": missing 'model_type'");
  EXPECT_HAS(error_of([&] { read_hf_config(dir + "/nope"); }), "cannot open " + dir + "/nope");

  // Qwen2 and Mistral: their own fields.
  nlohmann::json q = good;
  q["model_type"] = "qwen2";
  q["use_sliding_window"] = true;
  write_json(path, q);
  EXPECT_HAS(error_of([&] { read_hf_config(dir); }), path + ": unsupported field value use_sliding_window = true");
  q["use_sliding_window"] = false;
  q["sliding_window"] = 4096;  // ignored without use_sliding_window, as in transformers
  write_json(path, q);
  EXPECT_EQ(read_hf_config(dir).sliding_window, 0);
  nlohmann::json m = good;
  m["model_type"] = "mistral";
  for (const nlohmann::json& bad : {nlohmann::json(0), nlohmann::json(-3), nlohmann::json("4096"), nlohmann::json(1.5)}) {
    m["sliding_window"] = bad;
    write_json(path, m);
    EXPECT_HAS(error_of([&] { read_hf_config(dir); }), path + ": unsupported field value sliding_window = " + bad.dump());
  }
  m["sliding_window"] = nullptr;
  write_json(path, m);
  EXPECT_EQ(read_hf_config(dir).sliding_window, 0);

  const std::string gdir = fresh_dir("config_gpt2");
  save_hf(*random_model(tiny_gpt2()), nullptr, gdir);
  nlohmann::json g = read_json(gdir + "/config.json");
  g["scale_attn_by_inverse_layer_idx"] = true;
  write_json(gdir + "/config.json", g);
  EXPECT_HAS(error_of([&] { read_hf_config(gdir); }), "unsupported field value scale_attn_by_inverse_layer_idx = true");
  g["scale_attn_by_inverse_layer_idx"] = false;
  g["activation_function"] = "relu";
  write_json(gdir + "/config.json", g);
  EXPECT_HAS(error_of([&] { read_hf_config(gdir); }), "activation 'relu' is not supported for gpt2");
}
