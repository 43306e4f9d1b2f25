// One LoRA linear layer (models/lora.h on a LinearWeight) against float64 torch autograd written
// as PEFT's lora.Linear and QA-LoRA's pooled adapter (tests/parity/torch_lora.py): output, input
// gradient and both factors' gradients, plain and rsLoRA scaling, QA-LoRA pooling, with dropout
// (the mask, drawn by anvil's Philox, is handed to torch). The same on a quantized base (nf4 with and
// without double quantization, int4, int2): anvil computes through the fused quant kernels (few rows
// read the codes directly, many rows dequantize tiles for sgemm: both row counts run), torch gets the
// dequantized weight (LinearWeight::merged() before the adapter attaches).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>

#include "core/rng.h"
#include "models/linear_weight.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

struct Case {
  int64_t g;
  bool rslora;
  double dropout;
  std::string quant = "";  // "" dense | nf4 | nf4+dq | int4 | int2 (block 8)
  int64_t rows = 6;
};

// One case's layer, its outputs and what torch reads.
struct Ran {
  std::string name;
  std::unique_ptr<LinearWeight> lw;
  Tensor y, dx;
};

}  // namespace

TEST(LoraParity, MatchesTorchAutograd) {
  const int64_t in = 16, out = 12, r = 4;
  const std::vector<Case> cases = {{0, false, 0.0}, {0, true, 0.3}, {4, false, 0.0}, {4, true, 0.3},
                                   {0, false, 0.0, "nf4"}, {0, true, 0.3, "nf4+dq"}, {0, false, 0.0, "nf4+dq", 20},
                                   {8, false, 0.0, "int4"}, {4, true, 0.3, "int4", 20}, {8, false, 0.0, "int2", 20}};
  std::vector<Ran> runs;
  TensorMap inputs;
  for (const Case& c : cases) {
    const int64_t N = c.rows;
    const std::string name = "g=" + std::to_string(c.g) + (c.rslora ? " rslora" : "") + " p=" + std::to_string(c.dropout) +
                             (c.quant.empty() ? "" : " " + c.quant + " rows=" + std::to_string(N));
    LoraSpec spec;
    spec.r = r, spec.alpha = 8, spec.rslora = c.rslora, spec.qa_group = c.g, spec.dropout = c.dropout;
    runs.push_back({name, std::make_unique<LinearWeight>("model.layers.0.self_attn.q_proj", out, in, true), {}, {}});
    LinearWeight& lw = *runs.back().lw;
    lw.weight().value.copy_(random_tensor({out, in}, 81));
    lw.bias().value.copy_(random_tensor({out}, 82));
    if (c.quant == "nf4" || c.quant == "nf4+dq") {
      lw.set_quantized(kernels::quantize_nf4(lw.weight().value, c.quant == "nf4+dq", 8, name));
    } else if (!c.quant.empty()) {
      const auto scheme = c.quant == "int4" ? kernels::QuantScheme::Int4 : kernels::QuantScheme::Int2;
      lw.set_quantized(kernels::quantize_groupwise(lw.weight().value, scheme, 8, name));
    }
    const Tensor W = lw.merged();  // the base torch computes with: dequantized when quantized
    lw.attach_lora(spec);
    LoraAdapter& ad = *lw.lora();
    ad.A.value.copy_(random_tensor(ad.A.value.shape(), 83));
    ad.B.value.copy_(random_tensor(ad.B.value.shape(), 84));
    lw.weight().set_trainable(false);
    lw.bias().set_trainable(false);
    const Tensor x = random_tensor({N, in}, 85), dy = random_tensor({N, out}, 86);
    DropoutKey key;
    key.active = true, key.seed = 3, key.draw = 5, key.local_len = N, key.seq_len = N;
    // The mask as models/lora.h draws it: keep element (row, col) when its Philox uniform >= p.
    const int64_t cols = ad.A.value.size(1);
    Tensor mask = Tensor::empty({N, cols});
    const PhiloxStream rng(key.seed, stream_id((ad.B.name + ".lora_dropout").c_str()), key.draw);
    for (int64_t i = 0; i < N * cols; ++i)
      mask.data<float>()[i] = rng.uniform(i) >= c.dropout ? float(1.0 / (1.0 - c.dropout)) : 0.0f;

    runs.back().y = lw.forward(x, true, key);
    runs.back().dx = lw.input_grad(dy, key);
    lw.accumulate_grads(dy, x, key);
    const std::string k = "." + std::to_string(runs.size() - 1);
    const TensorMap these = {{"x", x}, {"W", W}, {"b", lw.bias().value}, {"A", ad.A.value},
                             {"B", ad.B.value}, {"dy", dy}, {"mask", mask},
                             {"params", Tensor::from_vector(std::vector<float>{spec.scaling(), float(c.g)}, {2})}};
    for (const auto& [n, t] : these) inputs[n + k] = t;
  }
  // One interpreter for every case (starting torch is the slow part).
  const std::string in_path = ::testing::TempDir() + "/lora_in.anvt", out_path = ::testing::TempDir() + "/lora_out.anvt";
  write_tensor_file(in_path, inputs);
  run_torch_script("tests/parity/torch_lora.py", in_path + " " + out_path);
  const TensorMap ref = read_tensor_file(out_path);
  for (size_t i = 0; i < runs.size(); ++i) {
    const std::string& name = runs[i].name;
    const std::string k = "." + std::to_string(i);
    const LinearWeight& lw = *runs[i].lw;
    const LoraAdapter& ad = *lw.lora();
    // f32 against float64: dot products of length <= max(in, rows) (20) of O(1) terms, scaled by at
    // most s = 4 and the dropout's 1/(1-p): a few tens of ulps of O(10) values.
    const double tol = 64 * std::numeric_limits<float>::epsilon() * std::max<int64_t>(in, cases[i].rows);
    EXPECT_LE(max_abs_diff(runs[i].y, ref.at("y" + k)), tol) << name;
    EXPECT_LE(max_abs_diff(runs[i].dx, ref.at("dx" + k)), tol) << name;
    EXPECT_LE(max_abs_diff(ad.A.grad, ref.at("dA" + k)), tol) << name;
    EXPECT_LE(max_abs_diff(ad.B.grad, ref.at("dB" + k)), tol) << name;
    EXPECT_FALSE(lw.weight().grad.defined()) << name << ": the frozen base has no gradient";
    EXPECT_EQ(lw.quantized(), !cases[i].quant.empty()) << name;
    if (i == 0 || i + 1 == runs.size())
      std::printf("[%s] max |diff| y %.2e dx %.2e dA %.2e dB %.2e (tol %.2e)\n", name.c_str(),
                  max_abs_diff(runs[i].y, ref.at("y" + k)), max_abs_diff(runs[i].dx, ref.at("dx" + k)),
                  max_abs_diff(ad.A.grad, ref.at("dA" + k)), max_abs_diff(ad.B.grad, ref.at("dB" + k)), tol);
  }
}
