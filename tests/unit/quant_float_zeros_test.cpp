// anvil's GPTQ extension for merged zero points (data/quant_checkpoint.h, checkpoint_format
// "anvil_float_zeros"): qweight/scales/g_idx as GPTQ and `<name>.zeros` f32 [in/g, out] instead of
// qzeros. Fractional and out-of-range zeros (a QA-LoRA merge) round-trip bitwise, with and without
// act order; the config parses; a zeros tensor of the wrong shape or dtype, or a non-finite zero,
// is one clear error; standard "gptq" still refuses fractional zeros.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "data/quant_checkpoint.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;
using kernels::QuantizedWeight;
using kernels::QuantScheme;

namespace {

GptqConfig float_zeros_config(int bits, int64_t group, bool act) {
  GptqConfig c;
  c.bits = bits;
  c.group_size = group;
  c.desc_act = act;
  c.sym = false;
  c.checkpoint_format = kAnvilFloatZeros;
  return c;
}

// A quantized weight whose zeros moved off the integers, some outside [0, qmax].
QuantizedWeight merged_like(QuantScheme scheme, int64_t out, int64_t in, int64_t group, uint32_t stream) {
  QuantizedWeight w = kernels::quantize_groupwise(random_tensor({out, in}, stream), scheme, group, "w");
  const Tensor shift = random_tensor(w.zeros.shape(), stream + 1, -3.0f, 3.0f);
  for (int64_t i = 0; i < w.zeros.numel(); ++i) w.zeros.data<float>()[i] += shift.data<float>()[i];
  return w;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  const Tensor x = a.contiguous(), y = b.contiguous();
  return x.dtype() == y.dtype() && x.shape() == y.shape() && std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()) == 0;
}

}  // namespace

TEST(QuantFloatZeros, RoundTripsBitwise) {
  for (const bool act : {false, true}) {
    for (const QuantScheme scheme : {QuantScheme::Int4, QuantScheme::Int2}) {
      const int bits = kernels::quant_bits(scheme);
      const QuantizedWeight w = merged_like(scheme, 16, 128, 32, 30 + bits + act);
      Tensor perm;
      if (act) {
        std::vector<int32_t> p(128);
        for (int j = 0; j < 128; ++j) p[j] = (j * 37) % 128;  // 37 is coprime to 128: a permutation
        // read_gptq's canonical order: each group's columns ascending (the stable sort by g_idx)
        for (int k = 0; k < 4; ++k) std::sort(p.begin() + 32 * k, p.begin() + 32 * (k + 1));
        perm = Tensor::from_vector(p, {128});
      }
      const GptqConfig config = float_zeros_config(bits, 32, act);
      TensorMap t;
      write_gptq(w, perm, config, DType::F32, "l", t);
      EXPECT_EQ(t.count("l.qzeros"), 0u);
      ASSERT_EQ(t.count("l.zeros"), 1u);
      EXPECT_EQ(t.at("l.zeros").shape(), (Shape{4, 16}));
      const GptqWeight back = read_gptq(t, "l", config, "test");
      EXPECT_TRUE(bitwise_equal(back.weight.packed, w.packed)) << bits << act;
      EXPECT_TRUE(bitwise_equal(back.weight.scales, w.scales)) << bits << act;
      EXPECT_TRUE(bitwise_equal(back.weight.zeros, w.zeros)) << bits << act;
      EXPECT_EQ(back.perm.defined(), act);
      if (act) EXPECT_TRUE(bitwise_equal(back.perm, perm));
    }
  }
}

TEST(QuantFloatZeros, ConfigAndBadTensors) {
  const GptqConfig parsed = parse_gptq_config(
      R"({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": false, "sym": false,
          "checkpoint_format": "anvil_float_zeros"}})", "config.json");
  EXPECT_EQ(parsed.checkpoint_format, kAnvilFloatZeros);
  const GptqConfig config = float_zeros_config(4, 32, false);
  const QuantizedWeight w = merged_like(QuantScheme::Int4, 16, 64, 32, 50);
  TensorMap t;
  write_gptq(w, Tensor(), config, DType::F32, "l", t);
  TensorMap bad = t;
  bad["l.zeros"] = Tensor::zeros({2, 8});
  std::string e = error_of([&] { read_gptq(bad, "l", config, "m.safetensors"); });
  EXPECT_NE(e.find("'l.zeros' in m.safetensors has shape [2, 8] but must be [2, 16]"), std::string::npos) << e;
  bad["l.zeros"] = Tensor::zeros({2, 16}, DType::I32);
  e = error_of([&] { read_gptq(bad, "l", config, "m.safetensors"); });
  EXPECT_NE(e.find("must be f32"), std::string::npos) << e;
  bad["l.zeros"] = t.at("l.zeros").clone();
  bad["l.zeros"].data<float>()[5] = std::nanf("");
  e = error_of([&] { read_gptq(bad, "l", config, "m.safetensors"); });
  EXPECT_NE(e.find("zeros must be finite"), std::string::npos) << e;
  bad.erase("l.zeros");
  bad["l.qzeros"] = Tensor::zeros({2, 2}, DType::I32);  // a standard file under the extension's config
  e = error_of([&] { read_gptq(bad, "l", config, "m.safetensors"); });
  EXPECT_NE(e.find("no 'l.zeros'"), std::string::npos) << e;
  // Standard GPTQ still cannot hold them.
  GptqConfig standard = config;
  standard.checkpoint_format = "gptq";
  e = error_of([&] { write_gptq(w, Tensor(), standard, DType::F32, "l", t); });
  EXPECT_NE(e.find("anvil_float_zeros"), std::string::npos) << e;
}
