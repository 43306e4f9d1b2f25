// The quantized formats (kernels/quant.h) against a numpy oracle written from bitsandbytes'
// and AutoAWQ's algorithms (tests/parity/quant_numpy_ref.py): packed codes, absmax, the double
// quantization's codes, scales and offset, int4/int2 scales and zeros, and the decoded Ŵ, all
// BITWISE — both sides do the same f32 operations in the same order (x · (1/absmax), f32
// midpoints, w / s, rint, s·(q − z), DYN[c]·scale + offset), and the one reduction, the mean of
// the absmaxes, is summed in double on both sides and rounded once. The weights include the
// ties: values exactly on NF4 and dynamic-map midpoints and w/s = k + 0.5 for rint.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "kernels/quant.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;
using kernels::QuantizedWeight;
using kernels::QuantScheme;

namespace {

// u8 codes as the i32 tensor the file format carries.
Tensor bytes_as_i32(const Tensor& t) {
  std::vector<int32_t> v(t.data<uint8_t>(), t.data<uint8_t>() + t.numel());
  return Tensor::from_vector(v, {t.numel()});
}

// Count of positions where a and b differ bitwise (shapes must agree), with the first reported.
void expect_bitwise(const Tensor& ours, const Tensor& ref, const std::string& what) {
  ASSERT_EQ(ours.numel(), ref.numel()) << what;
  ASSERT_EQ(ours.dtype(), ref.dtype()) << what;
  const Tensor a = ours.contiguous(), b = ref.contiguous();
  int64_t differ = 0, first = -1;
  const auto* pa = static_cast<const uint32_t*>(a.raw_data());
  const auto* pb = static_cast<const uint32_t*>(b.raw_data());
  for (int64_t i = 0; i < a.numel(); ++i) {
    if (pa[i] != pb[i] && differ++ == 0) first = i;
  }
  EXPECT_EQ(differ, 0) << what << ": " << differ << " of " << a.numel() << " differ, first at " << first
                       << " (ours " << a.to_vector()[first] << ", numpy " << b.to_vector()[first] << ")";
}

Tensor dequantize(const QuantizedWeight& w) {
  Tensor out = Tensor::empty({w.out_features, w.in_features});
  kernels::dequantize_rows(w, 0, w.out_features, out);
  return out;
}

// Random weights, each row scaled differently (so the absmaxes spread), some groups one-signed
// (AutoAWQ clamps their zero point to 0 instead of widening the range) and an all-zero block.
Tensor random_weight(int64_t out, int64_t in, uint32_t stream) {
  Tensor w = random_tensor({out, in}, stream, -1.0f, 1.0f);
  float* p = w.data<float>();
  for (int64_t r = 0; r < out; ++r)
    for (int64_t j = 0; j < in; ++j) p[r * in + j] *= 0.05f + 0.3f * static_cast<float>(r % 7);
  for (int64_t j = 0; j < 64; ++j) {
    p[in + j] = std::fabs(p[in + j]) + 0.01f;  // row 1 starts positive
    p[2 * in + j] = 0.0f;                      // row 2 starts with a zero block
  }
  return w;
}

// NF4 ties: a block with absmax 1 (x = w) and one with absmax 2 (1/2 and the doubling are exact)
// holding every f32 midpoint of neighbouring NF4 values, and the values one ulp above them.
void put_nf4_ties(Tensor& w) {
  float* p = w.data<float>();
  const float* nf4 = kernels::nf4_values();
  for (int copy = 0; copy < 2; ++copy) {
    const float scale = copy == 0 ? 1.0f : 2.0f;
    float* block = p + copy * 64;
    block[0] = -scale;
    for (int k = 0; k < 15; ++k) {
      const float mid = (nf4[k] + nf4[k + 1]) / 2.0f;
      block[1 + 2 * k] = scale * mid;
      block[2 + 2 * k] = scale * std::nextafter(mid, 2.0f);
    }
  }
}

// Absmaxes whose mean is exactly 1 and whose centred values (a − 1)·2 land exactly on midpoints
// of the dynamic map: pairs 1 ± M/2 for midpoints M that are multiples of 2^-22 (so 1 ± M/2 is an
// f32), plus 1.5 and 0.5 so every 256-block's scale is 0.5. Each row is one 64-block whose
// first element is its absmax.
Tensor dq_tie_weight(std::vector<float>* tie_midpoints) {
  const float* dyn = kernels::dynamic_map_signed();
  std::vector<float> absmax{1.5f, 0.5f};
  for (int k = 0; k < 255; ++k) {
    const float mid = (dyn[k] + dyn[k + 1]) / 2.0f;
    const double scaled = std::ldexp(static_cast<double>(mid), 22);
    if (mid > 0.0f && mid < 1.0f && scaled == std::floor(scaled)) {
      absmax.push_back(1.0f + mid / 2.0f);
      absmax.push_back(1.0f - mid / 2.0f);
      tie_midpoints->push_back(mid);
    }
  }
  const int64_t rows = static_cast<int64_t>(absmax.size());
  Tensor w = random_tensor({rows, 64}, 41, -0.4f, 0.4f);
  for (int64_t r = 0; r < rows; ++r) w.data<float>()[r * 64] = absmax[r];
  return w;
}

// Int ties: groups whose step is a power of two, with min = −(k + ½)·s (a zero point on a tie)
// and values at min + j·s, so every w / s is exactly k + ½ and rint rounds half to even.
void put_rint_ties(Tensor& w, int bits, int64_t group) {
  const int qmax = (1 << bits) - 1;
  const float s = bits == 4 ? 0.0625f : 0.25f;
  float* p = w.data<float>();
  for (int64_t g = 0; g < 2; ++g) {
    float* x = p + g * group;
    // z on a tie: rint(1.5), rint(2.5) for int2; rint(7.5), rint(8.5) for int4.
    const float lo = -(static_cast<float>(qmax / 2 + g) + 0.5f) * s;
    for (int64_t i = 0; i < group; ++i) x[i] = lo + static_cast<float>(i % (qmax + 1)) * s;  // w / s = k + ½
  }
}

}  // namespace

TEST(QuantNumpyParity, FormatsMatchTheNumpyOracleBitwise) {
  Tensor nf4_w = random_weight(8, 256, 31);
  put_nf4_ties(nf4_w);
  const Tensor dq_w = random_weight(17, 1024, 32);  // 272 absmaxes: a full and a partial 256-block
  std::vector<float> tie_midpoints;
  const Tensor dqties_w = dq_tie_weight(&tie_midpoints);
  ASSERT_GE(tie_midpoints.size(), 10u);
  Tensor int4_w = random_weight(6, 128, 33);
  put_rint_ties(int4_w, 4, 32);
  Tensor int2_w = random_weight(6, 128, 34);
  put_rint_ties(int2_w, 2, 16);

  const std::string in = ::testing::TempDir() + "/quant_in.anvt", out = ::testing::TempDir() + "/quant_out.anvt";
  write_tensor_file(in, {{"nf4.w", nf4_w}, {"dq.w", dq_w}, {"dqties.w", dqties_w}, {"int4.w", int4_w},
                         {"int2.w", int2_w}});
  run_torch_script("tests/parity/quant_numpy_ref.py", in + " " + out);
  const TensorMap ref = read_tensor_file(out);

  // The dynamic map: bitwise the numpy construction. bitsandbytes' own run through torch's f32
  // linspace, whose points are off by up to an ulp (which ones depends on torch's SIMD width);
  // the mean of two such points and the scaling by 10^(i−6) can double that, so within 2 ulps.
  const Tensor dyn = Tensor::from_vector(std::vector<float>(kernels::dynamic_map_signed(),
                                                            kernels::dynamic_map_signed() + 256), {256});
  expect_bitwise(dyn, ref.at("dyn.numpy"), "dynamic map");
  const auto torch_dyn = ref.at("dyn.torch").to_vector();
  int off_by_ulps = 0;
  for (int k = 0; k < 256; ++k) {
    const float ours = kernels::dynamic_map_signed()[k];
    const float ulp = std::nextafter(std::fabs(ours), 2.0f) - std::fabs(ours);
    EXPECT_LE(std::fabs(ours - torch_dyn[k]), 2 * ulp) << "map value " << k;
    off_by_ulps += ours != torch_dyn[k];
  }
  std::printf("dynamic map: %d of 256 values differ from torch's construction (all within 2 ulps)\n", off_by_ulps);

  const QuantizedWeight nf4 = kernels::quantize_nf4(nf4_w, false, 64, "nf4.w");
  expect_bitwise(bytes_as_i32(nf4.packed), ref.at("nf4.packed"), "nf4 packed");
  expect_bitwise(nf4.absmax, ref.at("nf4.absmax"), "nf4 absmax");
  expect_bitwise(dequantize(nf4), ref.at("nf4.w_hat"), "nf4 w_hat");

  for (const char* name : {"dq", "dqties"}) {
    const std::string c = name;
    const QuantizedWeight dq = kernels::quantize_nf4(c == "dq" ? dq_w : dqties_w, true, 64, c);
    expect_bitwise(bytes_as_i32(dq.packed), ref.at(c + ".packed"), c + " packed");
    expect_bitwise(bytes_as_i32(dq.absmax_codes), ref.at(c + ".absmax_codes"), c + " absmax_codes");
    expect_bitwise(dq.absmax_scales, ref.at(c + ".absmax_scales"), c + " absmax_scales");
    expect_bitwise(Tensor::from_vector(std::vector<float>{dq.absmax_offset}, {1}), ref.at(c + ".offset"), c + " offset");
    expect_bitwise(dequantize(dq), ref.at(c + ".w_hat"), c + " w_hat");
  }

  // The ties themselves went to the lower code, read back directly (not only via the oracle).
  const QuantizedWeight ties = kernels::quantize_nf4(dqties_w, true, 64, "dqties");
  ASSERT_EQ(ties.absmax_offset, 1.0f);
  ASSERT_EQ(ties.absmax_scales.to_vector(), std::vector<float>{0.5f});
  const float* dmap = kernels::dynamic_map_signed();
  for (size_t t = 0; t < tie_midpoints.size(); ++t) {
    for (int sign = 0; sign < 2; ++sign) {
      const int code = ties.absmax_codes.data<uint8_t>()[2 + 2 * t + sign];
      const float mid = sign == 0 ? tie_midpoints[t] : -tie_midpoints[t];
      EXPECT_LT(dmap[code], mid) << "tie at " << mid;
      EXPECT_GT(dmap[code + 1], mid) << "tie at " << mid;
    }
  }
  const uint8_t* nf4_bytes = nf4.packed.data<uint8_t>();
  for (int k = 0; k < 15; ++k) {  // block 0, element 1 + 2k: the midpoint of codes k and k + 1
    const int e = 1 + 2 * k;
    EXPECT_EQ((nf4_bytes[e / 2] >> (e % 2 == 0 ? 4 : 0)) & 15, k) << "NF4 tie " << k;
  }

  const struct {
    const char* name;
    const Tensor& w;
    QuantScheme scheme;
    int64_t group;
  } groupwise[] = {{"int4", int4_w, QuantScheme::Int4, 32}, {"int2", int2_w, QuantScheme::Int2, 16}};
  for (const auto& g : groupwise) {
    const std::string c = g.name;
    const QuantizedWeight q = kernels::quantize_groupwise(g.w, g.scheme, g.group, c);
    expect_bitwise(bytes_as_i32(q.packed), ref.at(c + ".packed"), c + " packed");
    expect_bitwise(q.scales, ref.at(c + ".scales"), c + " scales");
    expect_bitwise(q.zeros, ref.at(c + ".zeros"), c + " zeros");
    expect_bitwise(dequantize(q), ref.at(c + ".w_hat"), c + " w_hat");
  }
  // The rint ties: the zero points of the two tie groups are rint(k + ½), half to even.
  const QuantizedWeight int2 = kernels::quantize_groupwise(int2_w, QuantScheme::Int2, 16, "int2");
  EXPECT_EQ(int2.zeros.item_at({0, 0}), 2.0f);  // rint(1.5) = 2
  EXPECT_EQ(int2.zeros.item_at({0, 1}), 2.0f);  // rint(2.5) = 2
  const QuantizedWeight int4 = kernels::quantize_groupwise(int4_w, QuantScheme::Int4, 32, "int4");
  EXPECT_EQ(int4.zeros.item_at({0, 0}), 8.0f);  // rint(7.5) = 8
  EXPECT_EQ(int4.zeros.item_at({0, 1}), 8.0f);  // rint(8.5) = 8
}
