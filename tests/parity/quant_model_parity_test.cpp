// A quantized Llama with LoRA adapters against PyTorch (issue 17): trainer/quant.h quantizes every
// Linear but lm_head (nf4 with double quantization, QLoRA's block 64; int4 group 32), adapters
// with random A and B in ±0.2 attach (a trained adapter's scale: factors in ±1 make even the dense
// model's f32 logits drift 3e-5 from float64, the same with or without quantization), and anvil's forward (the fused quant kernels: no dense copy of the
// base) and backward run. Torch (tests/parity/torch_model.py, float64) gets each Linear's dense
// weight as LinearWeight::merged() exports it: the dequantized base plus s·B·A. Logits and loss
// agree within the whole-model parity tolerance (model_parity_test.cpp: f32 against float64 over
// reductions of a few hundred terms, 1e-5 relative); the adapters' gradients follow from torch's
// gradient G of the merged weight by the chain rule, dB = s·G·Aᵀ and dA = s·Bᵀ·G (in double), and
// agree within 1e-4 relative as model_parity_test's parameter gradients do.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/transformer.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"
#include "tests/support/tensor_file.h"
#include "trainer/lora.h"
#include "trainer/quant.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// The demo's shape, smaller: in_features 64 and 192 take nf4's block 64 and int4's group 32.
ModelConfig quant_llama() {
  ModelConfig c = parity_llama();
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 192;
  return c;
}

// x [m, k] · y [k, n] in double, `ta`/`tb` transposing x / y.
std::vector<double> matmul_double(const Tensor& x, bool ta, const Tensor& y, bool tb) {
  const Tensor a = ta ? x.transpose(0, 1).contiguous() : x.contiguous();
  const Tensor b = tb ? y.transpose(0, 1).contiguous() : y.contiguous();
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  const std::vector<float> va = a.to_vector(), vb = b.to_vector();
  std::vector<double> out(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t l = 0; l < k; ++l)
      for (int64_t j = 0; j < n; ++j) out[i * n + j] += static_cast<double>(va[i * k + l]) * vb[l * n + j];
  return out;
}

double max_rel_diff_double(const Tensor& got, const std::vector<double>& ref) {
  const std::vector<float> g = got.to_vector();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff = std::max(diff, std::fabs(g[i] - ref[i]));
    scale = std::max(scale, std::fabs(ref[i]));
  }
  return diff / scale;
}

void check_quant_parity(const std::string& scheme, int64_t block, bool double_quant, const std::string& tag) {
  const ModelConfig mc = quant_llama();
  TransformerLM model(mc);
  model.init_weights(7);
  randomize_params(model.params());
  RunConfig rc;
  rc.source = "quant_model_parity";
  rc.quant.scheme = scheme;
  rc.quant.block = block;
  rc.quant.double_quant = double_quant;
  rc.lora.modules = {"all-linear"};
  rc.lora.r = 4;
  rc.lora.alpha = 8;
  quantize_model(model, rc, nullptr, nullptr);
  const std::vector<Param*> adapters = attach_lora(model, rc, nullptr);
  uint32_t seed = 100;
  for (Param* p : adapters) p->value.copy_(random_tensor(p->value.shape(), seed++, -0.2f, 0.2f));

  std::vector<LinearWeight*> linears;
  model.collect_linears(linears);
  int quantized = 0;
  for (LinearWeight* lw : linears) quantized += lw->quantized();
  ASSERT_EQ(quantized, 7 * mc.num_hidden_layers) << tag;

  const int64_t B = 2, T = 40, V = mc.vocab_size;
  const Tensor ids = random_ids({B, T}, static_cast<int32_t>(V), 11);
  Tensor targets = random_ids({B, T}, static_cast<int32_t>(V), 12);
  for (int64_t i = 0; i < targets.numel(); i += 7) targets.data<int32_t>()[i] = -100;
  Cache cache;
  const float loss = model.forward_loss(ids, targets, cache);
  const Tensor logits = cache.get("logits").clone();
  model.backward_loss(cache);

  // Torch's model: the dense params as they are, every Linear's weight merged and dequantized.
  TensorMap inputs{{"ids", ids}, {"targets", targets}};
  for (Param* p : model.params())
    if (!p->keep_dtype && p->name.find(".lora_") == std::string::npos) inputs[p->name] = p->value;
  for (LinearWeight* lw : linears)
    if (!lw->tied()) inputs[lw->module_name() + ".weight"] = lw->merged();
  const std::string dir = ::testing::TempDir();
  const std::string config_path = dir + "/quant_parity_" + tag + ".json";
  const std::string in_path = dir + "/quant_parity_" + tag + "_in.anvt";
  const std::string out_path = dir + "/quant_parity_" + tag + "_out.anvt";
  std::ofstream(config_path) << mc.to_json().dump();
  write_tensor_file(in_path, inputs);
  run_torch_script("tests/parity/torch_model.py", config_path + " " + in_path + " " + out_path);
  const TensorMap ref = read_tensor_file(out_path);

  const double logit_err = max_rel_diff(logits, ref.at("logits").view(logits.shape()));
  EXPECT_LE(logit_err, 1e-5) << tag << " logits";
  const double ref_loss = ref.at("loss").item();
  EXPECT_LE(std::fabs(loss - ref_loss) / std::fabs(ref_loss), 1e-5) << tag << " loss " << loss << " vs " << ref_loss;
  double worst = 0;
  for (LinearWeight* lw : linears) {
    if (!lw->lora()) continue;
    const LoraAdapter& ad = *lw->lora();
    const Tensor G = ref.at("grad." + lw->module_name() + ".weight");
    const double s = ad.spec().scaling();
    std::vector<double> dB = matmul_double(G, false, ad.A.value, true), dA = matmul_double(ad.B.value, true, G, false);
    for (double& v : dB) v *= s;
    for (double& v : dA) v *= s;
    const double eb = max_rel_diff_double(ad.B.grad, dB), ea = max_rel_diff_double(ad.A.grad, dA);
    EXPECT_LE(eb, 1e-4) << tag << " " << ad.B.name;
    EXPECT_LE(ea, 1e-4) << tag << " " << ad.A.name;
    worst = std::max({worst, ea, eb});
  }
  std::printf("%s: logits rel err %.2e, loss %.6f (torch %.6f), worst adapter grad rel err %.2e\n", tag.c_str(),
              logit_err, loss, ref_loss, worst);
}

}  // namespace

TEST(QuantModelParity, QloraNf4DoubleQuantMatchesTorch) { check_quant_parity("nf4", 64, true, "nf4_dq"); }

TEST(QuantModelParity, Int4Group32MatchesTorch) { check_quant_parity("int4", 32, false, "int4_g32"); }
