// Pre-quantized Hugging Face model directories (issue 17, models/hf_quant.h) against PyTorch: a
// tiny Llama's Linears written by a numpy oracle (tests/parity/quant_model_ref.py, from AutoGPTQ's
// and bitsandbytes' formats) as GPTQ (v1; act order; sym with group_size -1; 2-bit) and bitsandbytes
// NF4 (nested and plain) load through load_model into quantized layers, and the logits equal
// torch_model.py's float64 model on the oracle's own decode of those weights. The bound is the f32
// one of the dense parity test (model_parity_test: 1e-5 of max|logit| for reductions of ≤ 128 terms
// over 2 layers); the quantization error the same weights would show if loaded dense is ~1e-2.
// write_quantized_hf of the loaded model reads back to the same logits bitwise.
// Bad input: packed sizes that do not match config.json, GPTQ tensors without a quantization_config,
// and a quant section that conflicts with the file's scheme.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/hf_convert.h"
#include "models/hf_quant.h"
#include "models/linear_weight.h"
#include "models/transformer.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"
#include "trainer/load_model.h"
#include "trainer/quant.h"

using namespace anvil;
using namespace anvil::testing;
namespace fs = std::filesystem;

namespace {

ModelConfig tiny_llama() {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 96;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 128;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = false;
  return c;
}

struct Oracle {
  std::string dir;
  Tensor ids, targets;
};

// Removes the process's oracle directory at exit.
struct RemoveAtExit {
  std::string dir;
  ~RemoveAtExit() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

// The oracle's directories, written once per process.
const Oracle& oracle() {
  static const Oracle o = [] {
    Oracle r;
    // Per process: ctest runs each case in a process of its own, several at once.
    r.dir = ::testing::TempDir() + "/quant_hf_model_" + std::to_string(::getpid());
    fs::remove_all(r.dir);
    fs::create_directories(r.dir);
    const ModelConfig c = tiny_llama();
    TransformerLM model(c);
    model.init_weights(7);
    randomize_params(model.params());
    r.ids = random_ids({2, 24}, static_cast<int32_t>(c.vocab_size), 11);
    r.targets = random_ids({2, 24}, static_cast<int32_t>(c.vocab_size), 12);
    TensorMap params{{"ids", r.ids}, {"targets", r.targets}};
    for (Param* p : model.params()) params[p->name] = p->value;
    write_tensor_file(r.dir + "/params.anvt", params);
    std::ofstream(r.dir + "/config.json") << hf_config_json(c).dump(2);
    run_torch_script("tests/parity/quant_model_ref.py",
                     r.dir + "/params.anvt " + r.dir + "/config.json " + r.dir);
    return r;
  }();
  static const RemoveAtExit cleanup{o.dir};
  return o;
}

Tensor logits_of(TransformerLM& model) {
  Cache cache;
  model.forward_loss(oracle().ids, oracle().targets, cache);
  return cache.get("logits").clone();
}

// torch_model.py's float64 logits of the oracle's decoded weights.
Tensor torch_logits(const std::string& c) {
  const std::string dir = oracle().dir;
  run_torch_script("tests/parity/torch_model.py", dir + "/config.json " + dir + "/" + c + ".anvt " + dir + "/" + c +
                                                      ".torch.anvt");
  return read_tensor_file(dir + "/" + c + ".torch.anvt").at("logits");
}

std::vector<LinearWeight*> linears_of(TransformerLM& model) {
  std::vector<LinearWeight*> out;
  model.collect_linears(out);
  return out;
}

struct Case {
  const char* name;
  kernels::QuantScheme scheme;
  bool act_order;
};

class QuantHfModel : public ::testing::TestWithParam<Case> {};

}  // namespace

TEST_P(QuantHfModel, LoadsQuantizedAndMatchesTorchOnTheDecodedWeights) {
  const Case c = GetParam();
  const std::string dir = oracle().dir + "/" + c.name;
  LoadedModel loaded = load_model(dir, {});
  int quantized = 0;
  for (LinearWeight* lw : linears_of(*loaded.model)) {
    const bool head = lw->module_name() == "lm_head";
    ASSERT_EQ(lw->quantized(), !head) << lw->module_name();
    if (head) continue;
    ++quantized;
    EXPECT_EQ(lw->quantized_weight().scheme, c.scheme) << lw->module_name();
    EXPECT_EQ(lw->quantized_perm().defined(), c.act_order) << lw->module_name();
  }
  EXPECT_EQ(quantized, 7 * tiny_llama().num_hidden_layers);

  const Tensor logits = logits_of(*loaded.model);
  const Tensor ref = torch_logits(c.name);
  const double err = max_rel_diff(logits, ref.view(logits.shape()));
  EXPECT_LE(err, 1e-5) << c.name;

  // Written back in its own format (int: GPTQ, nf4: bitsandbytes) and read again: the same weights.
  const std::string out = dir + "_rewritten";
  fs::remove_all(out);
  const std::string format = write_quantized_hf(*loaded.model, nullptr, out);
  EXPECT_EQ(format, c.scheme == kernels::QuantScheme::NF4 ? "bitsandbytes" : "gptq");
  LoadedModel again = load_model(out, {});
  const double roundtrip = max_abs_diff(logits_of(*again.model), logits);
  EXPECT_EQ(roundtrip, 0.0) << c.name;
  std::printf("%-16s %d quantized Linears, logits vs torch (decoded weights, float64): rel %.2e; rewritten as %s: "
              "max abs diff %.1e\n", c.name, quantized, err, format.c_str(), roundtrip);
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantHfModel,
                         ::testing::Values(Case{"gptq4", kernels::QuantScheme::Int4, false},
                                           Case{"gptq4_act", kernels::QuantScheme::Int4, true},
                                           Case{"gptq4_sym_whole", kernels::QuantScheme::Int4, false},
                                           Case{"gptq2", kernels::QuantScheme::Int2, false},
                                           Case{"bnb_nf4", kernels::QuantScheme::NF4, false},
                                           Case{"bnb_nf4_plain", kernels::QuantScheme::NF4, false}),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// Loading the GPTQ tensors dense would be off by the quantization error: the test above can fail.
TEST(QuantHfModelControl, DenseWeightsAreFarFromTheQuantizedModel) {
  TransformerLM dense(tiny_llama());
  const TensorMap params = read_tensor_file(oracle().dir + "/params.anvt");
  for (Param* p : dense.params()) p->value.copy_(params.at(p->name));
  const double err = max_rel_diff(logits_of(dense), torch_logits("gptq4").view({2, 24, 96}));
  EXPECT_GT(err, 1e-3);
  std::printf("the dense (unquantized) weights' logits vs the gptq4 model's: rel %.2e\n", err);
}

namespace {
// A copy of oracle case `from` at `to` whose config.json is edited by `edit`.
std::string edited_copy(const std::string& from, const std::string& to, const std::function<void(nlohmann::json&)>& edit) {
  const std::string src = oracle().dir + "/" + from, dst = oracle().dir + "/" + to;
  fs::remove_all(dst);
  fs::create_directories(dst);
  fs::copy_file(src + "/model.safetensors", dst + "/model.safetensors");
  nlohmann::json j = nlohmann::json::parse(std::ifstream(src + "/config.json"));
  edit(j);
  std::ofstream(dst + "/config.json") << j.dump(2);
  return dst;
}
}  // namespace

TEST(QuantHfModelBadInput, PackedSizesThatDoNotMatchConfigJson) {
  const std::string dir = edited_copy("gptq4", "gptq4_bad_shape", [](nlohmann::json& j) { j["intermediate_size"] = 96; });
  const std::string e = error_of([&] { load_model(dir, {}); });
  EXPECT_NE(e.find("model.layers.0.mlp.gate_proj"), std::string::npos) << e;
  EXPECT_NE(e.find("[128, 64]"), std::string::npos) << e;
  EXPECT_NE(e.find("[96, 64]"), std::string::npos) << e;
  EXPECT_NE(e.find("packed sizes do not match"), std::string::npos) << e;
}

TEST(QuantHfModelBadInput, GptqTensorsWithoutQuantizationConfig) {
  const std::string dir = edited_copy("gptq4", "gptq4_no_config", [](nlohmann::json& j) { j.erase("quantization_config"); });
  const std::string e = error_of([&] { load_model(dir, {}); });
  EXPECT_NE(e.find("is stored as GPTQ"), std::string::npos) << e;
  EXPECT_NE(e.find("it has none"), std::string::npos) << e;
}

TEST(QuantHfModelBadInput, QuantSectionMustMatchTheFile) {
  LoadedModel loaded = load_model(oracle().dir + "/gptq4", {});
  RunConfig rc;
  rc.source = "run.yaml";
  rc.model.init_from = oracle().dir + "/gptq4";
  rc.quant.scheme = "int4";
  rc.quant.block = 64;
  const std::string e = error_of([&] { quantize_model(*loaded.model, rc, nullptr, nullptr); });
  EXPECT_NE(e.find("int4 block 32"), std::string::npos) << e;
  EXPECT_NE(e.find("quant.scheme: none"), std::string::npos) << e;
  rc.quant.scheme = "nf4";
  EXPECT_NE(error_of([&] { quantize_model(*loaded.model, rc, nullptr, nullptr); }), "(no error)");
  // The file's own scheme, or none: the layers stay as the file has them.
  const Tensor before = logits_of(*loaded.model);
  rc.quant.scheme = "int4";
  rc.quant.block = 32;
  EXPECT_NO_THROW(quantize_model(*loaded.model, rc, nullptr, nullptr));
  rc.quant.scheme = "none";
  EXPECT_NO_THROW(quantize_model(*loaded.model, rc, nullptr, nullptr));
  EXPECT_EQ(max_abs_diff(logits_of(*loaded.model), before), 0.0);
}
