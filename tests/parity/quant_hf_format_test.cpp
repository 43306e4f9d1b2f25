// data/quant_checkpoint against bitsandbytes NF4 and GPTQ checkpoints written by a numpy oracle
// (tests/parity/quant_hf_ref.py, from bitsandbytes' QuantState.as_dict and AutoGPTQ's pack):
// - reading: our decode of the oracle's files equals its dequantization BITWISE (same f32 products);
//   with act order, Ŵ_ours[:, j] equals the oracle's column perm[j] bitwise, and the quantized
//   product x[:, perm] · Ŵ_oursᵀ matches x · Ŵᵀ (float64) within the f32 bound of a 128-term dot product;
// - writing: the oracle decodes our files, the consumers' way, to our Ŵ bitwise, and re-writing a
//   weight read from the oracle's GPTQ file reproduces its tensors bitwise;
// - round trips ours → file → ours are bitwise.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/quant_checkpoint.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;
using kernels::QuantizedWeight;
using kernels::QuantScheme;

namespace {

struct GptqCase {
  const char* name;
  int bits;
  int64_t group;
  const char* format;
  bool act;
  int64_t out, in;
};
const GptqCase kGptqCases[] = {{"gptq4_v1", 4, 32, "gptq", false, 16, 128},
                               {"gptq2_v2", 2, 16, "gptq_v2", false, 16, 64},
                               {"gptq4_act", 4, 32, "gptq", true, 16, 128},
                               {"gptq2_act", 2, 32, "gptq", true, 16, 128}};

// Rows scaled differently; row 1 starts with an all-positive group and row 2 with an all-negative
// one (zero points 0 and 2^b − 1 in both quantizers: GPTQ's v1 stores z = 0 as f = 2^b − 1).
Tensor weight(int64_t out, int64_t in, uint32_t stream) {
  Tensor w = random_tensor({out, in}, stream, -1.0f, 1.0f);
  float* p = w.data<float>();
  for (int64_t r = 0; r < out; ++r)
    for (int64_t j = 0; j < in; ++j) p[r * in + j] *= 0.05f + 0.2f * static_cast<float>(r % 5);
  for (int64_t j = 0; j < 64; ++j) {
    p[in + j] = std::fabs(p[in + j]) + 0.01f;
    p[2 * in + j] = -std::fabs(p[2 * in + j]) - 0.01f;
  }
  return w;
}

Tensor dequantize(const QuantizedWeight& w) {
  Tensor out = Tensor::empty({w.out_features, w.in_features});
  kernels::dequantize_rows(w, 0, w.out_features, out);
  return out;
}

// Same dtype, shape and bytes.
::testing::AssertionResult same_bytes(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return ::testing::AssertionFailure() << "one tensor is undefined";
  if (!a.defined()) return ::testing::AssertionSuccess();
  if (a.dtype() != b.dtype() || a.shape() != b.shape())
    return ::testing::AssertionFailure() << a.describe() << " vs " << b.describe();
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  const auto* pa = static_cast<const uint8_t*>(ca.raw_data());
  const auto* pb = static_cast<const uint8_t*>(cb.raw_data());
  for (size_t i = 0; i < ca.nbytes(); ++i) {
    if (pa[i] != pb[i]) return ::testing::AssertionFailure() << "byte " << i << " of " << ca.nbytes() << " differs";
  }
  return ::testing::AssertionSuccess();
}

void expect_same_weight(const QuantizedWeight& a, const QuantizedWeight& b, const std::string& what) {
  EXPECT_EQ(a.scheme, b.scheme) << what;
  EXPECT_EQ(a.out_features, b.out_features) << what;
  EXPECT_EQ(a.in_features, b.in_features) << what;
  EXPECT_EQ(a.block, b.block) << what;
  EXPECT_TRUE(same_bytes(a.packed, b.packed)) << what << " packed";
  EXPECT_TRUE(same_bytes(a.absmax, b.absmax)) << what << " absmax";
  EXPECT_TRUE(same_bytes(a.absmax_codes, b.absmax_codes)) << what << " absmax_codes";
  EXPECT_TRUE(same_bytes(a.absmax_scales, b.absmax_scales)) << what << " absmax_scales";
  EXPECT_EQ(std::memcmp(&a.absmax_offset, &b.absmax_offset, sizeof(float)), 0) << what << " offset";
  EXPECT_TRUE(same_bytes(a.scales, b.scales)) << what << " scales";
  EXPECT_TRUE(same_bytes(a.zeros, b.zeros)) << what << " zeros";
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// W[:, perm] of a dense [out, in] matrix.
Tensor gather_columns(const Tensor& w, const Tensor& perm) {
  const int64_t rows = w.size(0), cols = w.size(1);
  Tensor out = Tensor::empty({rows, cols});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) out.data<float>()[r * cols + j] = w.data<float>()[r * cols + perm.data<int32_t>()[j]];
  return out;
}

Tensor random_perm(int64_t n, uint32_t stream) {
  const auto keys = random_tensor({n}, stream).to_vector();
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>(i);
  std::sort(p.begin(), p.end(), [&](int32_t a, int32_t b) { return keys[a] < keys[b]; });
  return Tensor::from_vector(p, {n});
}

}  // namespace

TEST(QuantHfFormatParity, BnbAndGptqAgainstTheNumpyOracle) {
  const std::string root = ::testing::TempDir() + "/quant_hf";
  const std::string ours_dir = root + "/ours", ref_dir = root + "/ref";
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(ours_dir);
  std::filesystem::create_directories(ref_dir);

  // Inputs, and our own writes for the oracle to decode.
  TensorMap inputs;
  const Tensor x = random_tensor({5, 128}, 90);
  inputs["x"] = x;
  std::map<std::string, QuantizedWeight> ours;
  std::map<std::string, Tensor> ours_perm;
  inputs["bnb_plain.w"] = weight(16, 128, 91);
  inputs["bnb_nested.w"] = weight(24, 1024, 92);  // 384 absmaxes: a full and a partial 256-block
  for (const char* name : {"bnb_plain", "bnb_nested"}) {
    const bool nested = std::string(name) == "bnb_nested";
    ours[name] = kernels::quantize_nf4(inputs[std::string(name) + ".w"], nested, 64, name);
    TensorMap t;
    write_bnb_nf4(ours[name], "float32", "layer", t);
    write_safetensors(ours_dir + "/" + name + ".safetensors", t);
  }
  uint32_t stream = 93;
  for (const GptqCase& c : kGptqCases) {
    const Tensor w = weight(c.out, c.in, stream++);
    inputs[std::string(c.name) + ".w"] = w;
    const QuantScheme scheme = c.bits == 4 ? QuantScheme::Int4 : QuantScheme::Int2;
    Tensor perm;
    if (c.act) perm = random_perm(c.in, stream++);
    ours[c.name] = kernels::quantize_groupwise(c.act ? gather_columns(w, perm) : w, scheme, c.group, c.name);
    ours_perm[c.name] = perm;
    GptqConfig config{c.bits, c.group, c.act, false, c.format};
    TensorMap t;
    write_gptq(ours[c.name], perm, config, DType::F32, "layer", t);
    write_safetensors(ours_dir + "/" + c.name + ".safetensors", t);
    write_text(ours_dir + "/" + c.name + ".json", gptq_config_json(config));
  }
  write_tensor_file(root + "/inputs.anvt", inputs);
  run_torch_script("tests/parity/quant_hf_ref.py", root + "/inputs.anvt " + ours_dir + " " + ref_dir);
  const TensorMap expected = read_tensor_file(ref_dir + "/expected.anvt");

  // The oracle decodes our files to our Ŵ (act order: our column j is its column perm[j]).
  for (const auto& [name, w] : ours) {
    const Tensor mine = dequantize(w);
    const Tensor theirs = expected.at("ours." + name + ".w_hat");
    const Tensor& perm = ours_perm[name];
    EXPECT_TRUE(same_bytes(mine, perm.defined() ? gather_columns(theirs, perm) : theirs)) << name << " (our writer)";
  }

  // bitsandbytes files: exact decode, then write → read bitwise and the same tensors as the file.
  for (const char* name : {"bnb_plain", "bnb_nested"}) {
    const SafetensorsIndex file = SafetensorsIndex::open(ref_dir + "/" + name + ".safetensors");
    ASSERT_EQ(detect_hf_quant_format(linear_tensors(file, "layer"), "layer"), HfQuantFormat::BnbNF4);
    const BnbNF4Weight read = read_bnb_nf4(file, "layer");
    EXPECT_EQ(read.dtype, "bfloat16");
    EXPECT_EQ(read.weight.double_quant(), std::string(name) == "bnb_nested");
    EXPECT_TRUE(same_bytes(dequantize(read.weight), expected.at(std::string(name) + ".w_hat"))) << name;
    TensorMap t;
    write_bnb_nf4(read.weight, read.dtype, "layer", t);
    for (const auto& [tensor, value] : t) {
      if (tensor.find("quant_state") != std::string::npos) continue;  // same JSON, other whitespace
      EXPECT_TRUE(same_bytes(value, file.tensor(tensor))) << name << " " << tensor;
    }
    const std::string path = root + "/" + name + "_again.safetensors";
    write_safetensors(path, t);
    const BnbNF4Weight again = read_bnb_nf4(SafetensorsIndex::open(path), "layer");
    expect_same_weight(again.weight, read.weight, std::string(name) + " round trip");
    EXPECT_EQ(again.dtype, read.dtype);
  }

  // GPTQ files.
  for (const GptqCase& c : kGptqCases) {
    const std::string base = ref_dir + "/" + c.name;
    const GptqConfig config = parse_gptq_config(read_text(base + ".json"), base + ".json");
    EXPECT_EQ(config.bits, c.bits);
    EXPECT_EQ(config.group_size, c.group);
    EXPECT_EQ(config.desc_act, c.act);
    EXPECT_EQ(config.checkpoint_format, c.format);
    const SafetensorsIndex file = SafetensorsIndex::open(base + ".safetensors");
    ASSERT_EQ(detect_hf_quant_format(linear_tensors(file, "layer"), "layer"), HfQuantFormat::Gptq);
    const GptqWeight read = read_gptq(file, "layer", config);
    const Tensor w_hat = expected.at(std::string(c.name) + ".w_hat");
    ASSERT_EQ(read.perm.defined(), c.act) << c.name;
    const Tensor mine = dequantize(read.weight);
    EXPECT_TRUE(same_bytes(mine, c.act ? gather_columns(w_hat, read.perm) : w_hat)) << c.name;
    if (!c.act) {  // both zero-point extremes occur (rows 1 and 2), so v1's wrap of z = 0 is exercised
      const float zmax = static_cast<float>((1 << c.bits) - 1);
      const auto zeros = read.weight.zeros.to_vector();
      EXPECT_NE(std::find(zeros.begin(), zeros.end(), 0.0f), zeros.end()) << c.name;
      EXPECT_NE(std::find(zeros.begin(), zeros.end(), zmax), zeros.end()) << c.name;
    }
    if (c.act) {
      // y = x[:, perm] · Ŵ_oursᵀ against the oracle's x · Ŵᵀ in float64: |error| ≤ 2·n·u·Σ|x||w|.
      // (An f32 loop over our decode; the quantized product's own kernels are tested against dequantize_rows.)
      const Tensor xp = gather_columns(x, read.perm);
      Tensor y = Tensor::empty({x.size(0), c.out});
      for (int64_t r = 0; r < x.size(0); ++r)
        for (int64_t o = 0; o < c.out; ++o) {
          float acc = 0.0f;
          for (int64_t j = 0; j < c.in; ++j) acc += xp.data<float>()[r * c.in + j] * mine.data<float>()[o * c.in + j];
          y.data<float>()[r * c.out + o] = acc;
        }
      const Tensor y_ref = expected.at(std::string(c.name) + ".y");
      for (int64_t r = 0; r < x.size(0); ++r) {
        for (int64_t o = 0; o < c.out; ++o) {
          double mag = 0.0;
          for (int64_t i = 0; i < c.in; ++i)
            mag += std::fabs(x.data<float>()[r * c.in + i] * w_hat.data<float>()[o * c.in + i]);
          const double tol = 2.0 * static_cast<double>(c.in) * std::ldexp(1.0, -24) * mag + 1e-30;
          EXPECT_NEAR(y.data<float>()[r * c.out + o], y_ref.data<float>()[r * c.out + o], tol)
              << c.name << " row " << r << " out " << o;
        }
      }
    }
    // Written back with GPTQ's f16 scales: the oracle's tensors, bitwise; and read again, the same weight.
    TensorMap t;
    write_gptq(read.weight, read.perm, config, DType::F16, "layer", t);
    for (const auto& [tensor, value] : t) EXPECT_TRUE(same_bytes(value, file.tensor(tensor))) << c.name << " " << tensor;
    const std::string path = root + "/" + c.name + "_again.safetensors";
    write_safetensors(path, t);
    const GptqWeight again = read_gptq(SafetensorsIndex::open(path), "layer", config);
    expect_same_weight(again.weight, read.weight, std::string(c.name) + " round trip");
    EXPECT_TRUE(same_bytes(again.perm, read.perm)) << c.name;
  }

  // Ours → file → ours with f32 scales (the oracle above read these files): bitwise.
  for (const GptqCase& c : kGptqCases) {
    const GptqConfig config = parse_gptq_config(read_text(ours_dir + "/" + c.name + ".json"), c.name);
    const GptqWeight back = read_gptq(SafetensorsIndex::open(ours_dir + "/" + c.name + ".safetensors"), "layer", config);
    // Our perm is any permutation; the reader's is the stable sort by group, so compare the decodes
    // column for column in the file's order.
    const QuantizedWeight& w = ours[c.name];
    if (!c.act) {
      expect_same_weight(back.weight, w, std::string(c.name) + " ours round trip");
      continue;
    }
    const Tensor a = dequantize(back.weight), b = dequantize(w);
    Tensor a_file = Tensor::empty(a.shape()), b_file = Tensor::empty(b.shape());
    for (int64_t r = 0; r < c.out; ++r)
      for (int64_t j = 0; j < c.in; ++j) {
        a_file.data<float>()[r * c.in + back.perm.data<int32_t>()[j]] = a.data<float>()[r * c.in + j];
        b_file.data<float>()[r * c.in + ours_perm[c.name].data<int32_t>()[j]] = b.data<float>()[r * c.in + j];
      }
    EXPECT_TRUE(same_bytes(a_file, b_file)) << c.name << " ours round trip";
  }
  for (const char* name : {"bnb_plain", "bnb_nested"}) {
    const BnbNF4Weight back = read_bnb_nf4(SafetensorsIndex::open(ours_dir + "/" + name + ".safetensors"), "layer");
    expect_same_weight(back.weight, ours[name], std::string(name) + " ours round trip");
    EXPECT_EQ(back.dtype, "float32");
  }
}
