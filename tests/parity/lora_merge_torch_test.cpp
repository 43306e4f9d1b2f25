// QA-LoRA's merge (models/lora_merge.h) against a torch float64 oracle written as QA-LoRA's code
// runs the adapter (tests/parity/lora_merge_ref.py: avg_pool1d over the groups, lora_A, lora_B,
// the scaling, on the group-wise dequantized base): the merged zero points, and the merged
// weight's f32 output against the oracle's adapter model, within the 1e-5 relative bar.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>

#include "models/lora_merge.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;
using kernels::QuantizedWeight;
using kernels::QuantScheme;

namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();

// The codes unpacked here, independently of the library: the first element in the high bits.
Tensor codes_of(const QuantizedWeight& w) {
  const int bits = kernels::quant_bits(w.scheme), per_byte = 8 / bits;
  std::vector<int32_t> v(static_cast<size_t>(w.numel()));
  for (int64_t e = 0; e < w.numel(); ++e)
    v[e] = (w.packed.data<uint8_t>()[e / per_byte] >> (8 - bits * (e % per_byte + 1))) & ((1 << bits) - 1);
  return Tensor::from_vector(v, {w.out_features, w.in_features});
}

struct Case {
  std::string name;
  QuantScheme scheme;
  int64_t g;
};

}  // namespace

TEST(LoraMergeTorch, QaLoraMergeMatchesTorch) {
  const int64_t out = 9, in = 64, r = 4, rows = 6;
  const double alpha = 8.0;
  const std::vector<Case> cases{{"int4", QuantScheme::Int4, 16}, {"int2", QuantScheme::Int2, 32}};
  std::vector<QuantizedWeight> bases, merged;
  std::vector<std::unique_ptr<LoraAdapter>> adapters;
  TensorMap inputs;
  uint32_t stream = 700;
  for (const Case& c : cases) {
    const QuantizedWeight base =
        kernels::quantize_groupwise(random_tensor({out, in}, stream++, -0.035f, 0.035f), c.scheme, c.g, c.name);
    LoraSpec spec;
    spec.r = r, spec.alpha = alpha, spec.qa_group = c.g;
    auto adapter = std::make_unique<LoraAdapter>("layers.1.mlp.down_proj", out, in, ShardSpec{}, spec);
    adapter->A.value.copy_(random_tensor({r, in / c.g}, stream++));
    adapter->B.value.copy_(random_tensor({out, r}, stream++, -0.02f, 0.02f));
    const Tensor x = random_tensor({rows, in}, stream++);
    inputs[c.name + ".codes"] = codes_of(base);
    inputs[c.name + ".scales"] = base.scales;
    inputs[c.name + ".zeros"] = base.zeros;
    inputs[c.name + ".A"] = adapter->A.value;
    inputs[c.name + ".B"] = adapter->B.value;
    inputs[c.name + ".x"] = x;
    inputs[c.name + ".meta"] = Tensor::from_vector(std::vector<float>{float(c.g), spec.scaling()}, {2});
    merged.push_back(merge_qa_lora(base, *adapter, c.name));
    bases.push_back(base);
    adapters.push_back(std::move(adapter));
  }
  const std::string in_path = ::testing::TempDir() + "/lora_merge_in.anvt";
  const std::string out_path = ::testing::TempDir() + "/lora_merge_out.anvt";
  write_tensor_file(in_path, inputs);
  run_torch_script("tests/parity/lora_merge_ref.py", in_path + " " + out_path);
  const TensorMap ref = read_tensor_file(out_path);

  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    const int64_t groups = in / c.g;
    const float scaling = adapters[k]->spec().scaling();
    // Zero points: ΔW's f32 rounding is (r + 2)ε of scaling·|B||A|/(g·s); z' itself and the
    // oracle's f32 copy of it round once each.
    const float* a = adapters[k]->A.value.data<float>();
    const float* b = adapters[k]->B.value.data<float>();
    const float* zr = ref.at(c.name + ".zeros_merged").data<float>();
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < groups; ++j) {
        double ba_abs = 0;
        for (int64_t t = 0; t < r; ++t) ba_abs += std::fabs(double(b[o * r + t]) * a[t * groups + j]);
        const double s = bases[k].scales.data<float>()[o * groups + j];
        const double tol = 2 * kEps * std::fabs(zr[o * groups + j]) + (r + 2) * kEps * scaling * ba_abs / (c.g * s);
        EXPECT_NEAR(merged[k].zeros.data<float>()[o * groups + j], zr[o * groups + j], tol)
            << c.name << " row " << o << " group " << j;
      }
    // Outputs: the merged weight in f32 against torch's adapter model, and torch's own merged
    // product against it (the formula's exactness, in float64).
    const Tensor x = inputs.at(c.name + ".x");
    Tensor y = Tensor::empty({rows, out});
    kernels::quant_matmul(x, merged[k], y);
    const double rel = max_rel_diff(y, ref.at(c.name + ".y"));
    EXPECT_LE(rel, 1e-5) << c.name;
    EXPECT_LE(max_rel_diff(ref.at(c.name + ".y_merged"), ref.at(c.name + ".y")), 4 * kEps) << c.name;
    const MergeError e = merge_output_error(merged[k], bases[k], *adapters[k], x);
    EXPECT_LE(e.max_rel, 1e-5) << c.name;
    std::printf("[ %s g=%ld ] merged vs torch's adapter model: max_rel %.3g; vs anvil's f32 adapter model %.3g\n",
                c.name.c_str(), long(c.g), rel, e.max_rel);
  }
}
