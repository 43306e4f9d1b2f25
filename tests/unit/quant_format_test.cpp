// kernels/quant.h formats on the CPU: the published test vectors of ALGORITHMS.md §9, the NF4
// table rebuilt from Φ⁻¹, the dynamic map's structure, the packing order, round-trip error
// bounds, odd shapes and every error of check_quantized_weight and the quantizers.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/quant.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;
using kernels::QuantizedWeight;
using kernels::QuantScheme;

namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();

// Element e's code, unpacked here independently of the implementation: 8 / bits codes per byte,
// the first in the most significant bits.
int code_at(const QuantizedWeight& w, int64_t e) {
  const int bits = w.scheme == QuantScheme::Int2 ? 2 : 4;
  const int per_byte = 8 / bits;
  const int byte = w.packed.data<uint8_t>()[e / per_byte];
  return (byte >> (8 - bits * (e % per_byte + 1))) & ((1 << bits) - 1);
}

Tensor dequantize(const QuantizedWeight& w) {
  Tensor out = Tensor::empty({w.out_features, w.in_features});
  kernels::dequantize_rows(w, 0, w.out_features, out);
  return out;
}

// A row of `in` weights starting with `head`, the rest repeating it (so min, max and absmax stay those of head).
Tensor repeated_row(const std::vector<float>& head, int64_t in) {
  std::vector<float> v(static_cast<size_t>(in));
  for (int64_t i = 0; i < in; ++i) v[i] = head[i % head.size()];
  return Tensor::from_vector(v, {1, in});
}

// Φ⁻¹(p) for p ≥ 0.5 by Newton on Φ(x) = erfc(−x/√2)/2 from 0: Φ is concave there, so the
// iterates rise monotonically to the root.
double inverse_normal_cdf(double p) {
  double x = 0.0;
  for (int it = 0; it < 100; ++it) {
    const double f = 0.5 * std::erfc(-x / std::sqrt(2.0)) - p;
    const double dx = f / (std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI));
    x -= dx;
    if (std::fabs(dx) < 1e-15) break;
  }
  return x;
}

// Half the widest gap between neighbouring NF4 values: the worst relative rounding error.
double nf4_half_gap() {
  double gap = 0.0;
  for (int k = 0; k < 15; ++k) gap = std::max(gap, double(kernels::nf4_values()[k + 1]) - kernels::nf4_values()[k]);
  return gap / 2.0;
}

}  // namespace

TEST(QuantFormat, SchemeNamesBitsAndParsing) {
  EXPECT_EQ(kernels::quant_bits(QuantScheme::NF4), 4);
  EXPECT_EQ(kernels::quant_bits(QuantScheme::Int4), 4);
  EXPECT_EQ(kernels::quant_bits(QuantScheme::Int2), 2);
  for (QuantScheme s : {QuantScheme::NF4, QuantScheme::Int4, QuantScheme::Int2})
    EXPECT_EQ(kernels::parse_quant_scheme(kernels::quant_scheme_name(s), "lora.quant"), s);
  const std::string err = error_of([] { kernels::parse_quant_scheme("fp4", "lora.quant"); });
  EXPECT_NE(err.find("lora.quant"), std::string::npos) << err;
  EXPECT_NE(err.find("'fp4'"), std::string::npos) << err;
  EXPECT_NE(err.find("nf4, int4 or int2"), std::string::npos) << err;
}

// ALGORITHMS.md §9: [0.1, −0.5, 1.0, 0.3] with absmax 1 gives codes [8, 2, 15, 11].
TEST(QuantFormat, Nf4TestVector) {
  const std::vector<float> head{0.1f, -0.5f, 1.0f, 0.3f};
  std::vector<float> v(64, 0.0f);
  std::copy(head.begin(), head.end(), v.begin());
  const QuantizedWeight q = kernels::quantize_nf4(Tensor::from_vector(v, {1, 64}), false, 64, "w");
  EXPECT_EQ(q.absmax.to_vector(), std::vector<float>{1.0f});
  // Packing: element 2i in the high nibble of byte i.
  EXPECT_EQ(q.packed.data<uint8_t>()[0], 0x82);
  EXPECT_EQ(q.packed.data<uint8_t>()[1], 0xFB);
  const std::vector<int> codes{8, 2, 15, 11};
  const std::vector<float> values{0.0795803f, -0.5250731f, 1.0f, 0.3379152f};
  const auto w_hat = dequantize(q).to_vector();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(code_at(q, i), codes[i]);
    EXPECT_NEAR(w_hat[i], values[i], 1e-7);
  }
  for (int i = 4; i < 64; ++i) {
    EXPECT_EQ(code_at(q, i), 7);  // NF4's exact 0
    EXPECT_EQ(w_hat[i], 0.0f);
  }
}

// The constants come from Φ⁻¹ at 9 (positive) and 8 (negative) equally spaced points from 0.9677083
// to 0.5, dropping 0.5, plus 0, normalised by the maximum. The published values are f32 results
// of bitsandbytes (≤ 6e-8 rounding) of a construction that differs from this double one by at most
// 1.1e-7; neighbouring values are ≥ 0.08 apart, so 2e-7 still catches any wrong point or offset.
TEST(QuantFormat, Nf4TableRebuiltFromInverseNormal) {
  const double offset = 0.9677083;
  std::vector<double> v{0.0};
  for (int k = 0; k < 8; ++k) v.push_back(inverse_normal_cdf(offset + (0.5 - offset) * k / 8.0));
  for (int k = 0; k < 7; ++k) v.push_back(-inverse_normal_cdf(offset + (0.5 - offset) * k / 7.0));
  std::sort(v.begin(), v.end());
  for (int k = 0; k < 16; ++k) EXPECT_NEAR(kernels::nf4_values()[k], v[k] / v[15], 2e-7) << "code " << k;
  EXPECT_EQ(kernels::nf4_values()[0], -1.0f);
  EXPECT_EQ(kernels::nf4_values()[7], 0.0f);
  EXPECT_EQ(kernels::nf4_values()[15], 1.0f);
}

// create_dynamic_map(signed=True): 127 negative values, 0, 127 positive ones mirroring them, and 1;
// the smallest magnitude is 10⁻⁶·(0.1 + 1)/2, the largest below 1 the last midpoint of
// linspace(0.1, 1, 65), 1 − 0.9/128. (Bitwise against numpy and torch: quant_numpy_test.)
TEST(QuantFormat, DynamicMapStructure) {
  const float* m = kernels::dynamic_map_signed();
  for (int k = 0; k < 255; ++k) EXPECT_LT(m[k], m[k + 1]) << k;
  EXPECT_EQ(m[127], 0.0f);
  EXPECT_EQ(m[255], 1.0f);
  for (int j = 1; j <= 127; ++j) EXPECT_EQ(m[127 - j], -m[127 + j]) << j;
  EXPECT_NEAR(m[128], 1e-6 * 0.55, 1e-6 * 0.55 * kEps);
  EXPECT_NEAR(m[254], 1.0 - 0.9 / 128.0, kEps);
  EXPECT_NEAR(m[0], -(1.0 - 0.9 / 128.0), kEps);
  // Exponent i holds 2^i values in (10^(i−6)·0.1, 10^(i−6)]: 1, 2, 4, ... 64 per sign.
  int decade_start = 128;
  for (int i = 0; i < 7; ++i) {
    for (int k = 0; k < (1 << i); ++k) {
      const double v = m[decade_start + k];
      EXPECT_GT(v, std::pow(10.0, i - 6) * 0.1) << i;
      EXPECT_LT(v, std::pow(10.0, i - 6)) << i;
    }
    decade_start += 1 << i;
  }
}

// ALGORITHMS.md §9 int4 and int2 vectors (a group of 8: the 4 values twice).
TEST(QuantFormat, GroupwiseTestVectors) {
  struct Case {
    QuantScheme scheme;
    std::vector<float> w;
    float s, z;
    std::vector<int> q;
    std::vector<float> w_hat;
  };
  const std::vector<Case> cases{
      {QuantScheme::Int4, {-0.6f, -0.2f, 0.1f, 0.9f}, 0.1f, 6, {0, 4, 7, 15}, {-0.6f, -0.2f, 0.1f, 0.9f}},
      {QuantScheme::Int4, {0.12f, -0.31f, 0.05f, 0.44f}, 0.05f, 6, {8, 0, 7, 15}, {0.10f, -0.30f, 0.05f, 0.45f}},
      {QuantScheme::Int2, {-0.6f, -0.2f, 0.1f, 0.9f}, 0.5f, 1, {0, 1, 1, 3}, {-0.5f, 0.0f, 0.0f, 1.0f}},
  };
  for (const Case& c : cases) {
    const QuantizedWeight q = kernels::quantize_groupwise(repeated_row(c.w, 8), c.scheme, 8, "w");
    ASSERT_EQ(q.scales.shape(), (Shape{1, 1}));
    EXPECT_NEAR(q.scales.item(), c.s, 2 * kEps * c.s);
    EXPECT_EQ(q.zeros.item(), c.z);
    const auto w_hat = dequantize(q).to_vector();
    for (int i = 0; i < 8; ++i) {
      EXPECT_EQ(code_at(q, i), c.q[i % 4]) << quant_scheme_name(c.scheme) << " element " << i;
      EXPECT_NEAR(w_hat[i], c.w_hat[i % 4], 4 * kEps) << quant_scheme_name(c.scheme) << " element " << i;
    }
  }
}

// int2 packs 4 codes per byte, the first element in bits 7-6.
TEST(QuantFormat, Int2PackingOrder) {
  const QuantizedWeight q =
      kernels::quantize_groupwise(repeated_row({-0.6f, -0.2f, 0.1f, 0.9f}, 8), QuantScheme::Int2, 8, "w");
  ASSERT_EQ(q.packed.numel(), 2);
  EXPECT_EQ(q.packed.data<uint8_t>()[0], (0 << 6) | (1 << 4) | (1 << 2) | 3);
  EXPECT_EQ(q.packed.data<uint8_t>()[1], q.packed.data<uint8_t>()[0]);
}

// Group-wise round trip over groups that span 0 (AutoAWQ does not widen the range to 0, so a
// one-signed group clamps z): |w − ŵ| ≤ s/2 up to the f32 rounding of s (relative, times qmax
// steps), w/s and s·(q − z).
TEST(QuantFormat, GroupwiseRoundTripWithinHalfAStep) {
  for (QuantScheme scheme : {QuantScheme::Int4, QuantScheme::Int2}) {
    for (int64_t group : {8, 32}) {
      const int64_t out = 5, in = 96;
      Tensor w = random_tensor({out, in}, 11, -1.0f, 1.0f);
      float* p = w.data<float>();
      for (int64_t g = 0; g < out * in / group; ++g) {  // every group spans 0
        p[g * group] = -0.75f;
        p[g * group + 1] = 0.5f;
      }
      const QuantizedWeight q = kernels::quantize_groupwise(w, scheme, group, "w");
      kernels::check_quantized_weight(q, "w");
      const auto w_hat = dequantize(q).to_vector();
      for (int64_t r = 0; r < out; ++r) {
        for (int64_t j = 0; j < in; ++j) {
          const double s = q.scales.item_at({r, j / group}), z = q.zeros.item_at({r, j / group});
          EXPECT_EQ(z, std::nearbyint(z));
          EXPECT_GE(z, 0.0);
          const double x = p[r * in + j];
          EXPECT_LE(std::fabs(x - w_hat[r * in + j]), s / 2 + 4 * kEps * (std::fabs(x) + 16 * s))
              << quant_scheme_name(scheme) << " group " << group << " at " << r << ", " << j;
          // ŵ is exactly what the stored fields say, decoded here in double.
          EXPECT_NEAR(w_hat[r * in + j], s * (code_at(q, r * in + j) - z), kEps * s * 16);
        }
      }
    }
  }
}

// NF4 round trip: each code is a nearest NF4 value of x = w / absmax (within an ulp of x: bitsandbytes
// multiplies by the f32 reciprocal), so |w − ŵ| ≤ (half the widest gap)·absmax; the absmax is exact.
TEST(QuantFormat, Nf4RoundTripPicksNearestCode) {
  const int64_t out = 6, in = 128, block = 64;
  const Tensor w = random_tensor({out, in}, 12, -2.0f, 2.0f);
  const QuantizedWeight q = kernels::quantize_nf4(w, false, block, "w");
  kernels::check_quantized_weight(q, "w");
  const auto pw = w.to_vector(), w_hat = dequantize(q).to_vector(), absmax = q.absmax.to_vector();
  const float* nf4 = kernels::nf4_values();
  for (int64_t b = 0; b < out * in / block; ++b) {
    float m = 0.0f;
    for (int64_t i = 0; i < block; ++i) m = std::max(m, std::fabs(pw[b * block + i]));
    EXPECT_EQ(absmax[b], m);
    for (int64_t i = 0; i < block; ++i) {
      const int64_t e = b * block + i;
      const double x = pw[e] / double(m);
      const int c = code_at(q, e);
      for (int k = 0; k < 16; ++k)
        EXPECT_LE(std::fabs(x - nf4[c]), std::fabs(x - nf4[k]) + 2 * kEps) << "element " << e << " code " << k;
      EXPECT_LE(std::fabs(pw[e] - w_hat[e]), nf4_half_gap() * m * (1 + 2 * kEps)) << e;
      EXPECT_EQ(w_hat[e], nf4[c] * m) << e;
    }
  }
}

// Values exactly on an NF4 midpoint go to the lower code (bitsandbytes' decision tree uses x > t).
TEST(QuantFormat, Nf4TiesGoToTheLowerCode) {
  const float* nf4 = kernels::nf4_values();
  std::vector<float> v(16, 0.0f);
  v[0] = 1.0f;  // absmax 1, so x = w exactly
  for (int k = 0; k < 15; ++k) v[k + 1] = (nf4[k] + nf4[k + 1]) / 2.0f;
  const QuantizedWeight q = kernels::quantize_nf4(Tensor::from_vector(v, {1, 16}), false, 16, "w");
  for (int k = 0; k < 15; ++k) {
    EXPECT_EQ(code_at(q, k + 1), k) << "midpoint of " << k << " and " << k + 1;
    const float above = std::nextafter(v[k + 1], 2.0f);
    std::vector<float> u(16, above);
    u[0] = 1.0f;
    const QuantizedWeight qa = kernels::quantize_nf4(Tensor::from_vector(u, {1, 16}), false, 16, "w");
    EXPECT_EQ(code_at(qa, 1), k + 1) << "just above the midpoint of " << k << " and " << k + 1;
  }
}

// Double quantization: the NF4 codes are those of the plain format, and each absmax comes back
// as DYN[code]·scale + offset within half the widest dynamic-map gap (0.9/128 of the scale, near ±1).
TEST(QuantFormat, DoubleQuantRoundTrip) {
  const int64_t out = 5, in = 64 * 60, block = 64;  // 300 absmaxes: a full and a partial 256-block
  const Tensor w = random_tensor({out, in}, 13, -1.0f, 1.0f);
  const QuantizedWeight plain = kernels::quantize_nf4(w, false, block, "w");
  const QuantizedWeight dq = kernels::quantize_nf4(w, true, block, "w");
  kernels::check_quantized_weight(dq, "w");
  ASSERT_TRUE(dq.double_quant());
  ASSERT_FALSE(dq.absmax.defined());
  ASSERT_EQ(dq.absmax_scales.numel(), 2);
  EXPECT_EQ(std::vector<uint8_t>(plain.packed.data<uint8_t>(), plain.packed.data<uint8_t>() + plain.packed.numel()),
            std::vector<uint8_t>(dq.packed.data<uint8_t>(), dq.packed.data<uint8_t>() + dq.packed.numel()));
  const auto absmax = plain.absmax.to_vector();
  double mean = 0.0;
  for (float a : absmax) mean += a;
  mean /= double(absmax.size());
  EXPECT_NEAR(dq.absmax_offset, mean, kEps * mean);
  const float* dyn = kernels::dynamic_map_signed();
  const uint8_t* codes = dq.absmax_codes.data<uint8_t>();
  const auto scales = dq.absmax_scales.to_vector();
  for (int64_t k = 0; k < 2; ++k) {
    double m = 0.0;
    for (int64_t b = k * 256; b < std::min<int64_t>(300, (k + 1) * 256); ++b)
      m = std::max(m, std::fabs(double(absmax[b]) - dq.absmax_offset));
    EXPECT_NEAR(scales[k], m, 2 * kEps * m);
  }
  const auto w_hat = dequantize(dq).to_vector(), pw = w.to_vector();
  for (int64_t b = 0; b < 300; ++b) {
    const double a_hat = double(dyn[codes[b]]) * scales[b / 256] + dq.absmax_offset;
    EXPECT_LE(std::fabs(a_hat - absmax[b]), scales[b / 256] / 128.0 + 4 * kEps * absmax[b]) << b;
    for (int64_t i = 0; i < block; ++i) {
      const int64_t e = b * block + i;
      EXPECT_NEAR(w_hat[e], kernels::nf4_values()[code_at(dq, e)] * a_hat, 4 * kEps * (a_hat + scales[b / 256])) << e;
      EXPECT_LE(std::fabs(pw[e] - w_hat[e]), nf4_half_gap() * absmax[b] + std::fabs(a_hat - absmax[b]) + 4 * kEps) << e;
    }
  }
}

// Memory: 4 bits a weight plus 32/64 (plain) or 8/64 + 32/(64·256) (double-quantized) bits.
TEST(QuantFormat, BytesPerFormat) {
  const int64_t out = 64, in = 1024;
  const Tensor w = random_tensor({out, in}, 14);
  const int64_t n = out * in;
  EXPECT_EQ(kernels::quantize_nf4(w, false, 64, "w").bytes(), n / 2 + 4 * n / 64);
  EXPECT_EQ(kernels::quantize_nf4(w, true, 64, "w").bytes(), n / 2 + n / 64 + 4 * (n / 64 / 256) + 4);
  EXPECT_NEAR(8.0 * kernels::quantize_nf4(w, true, 64, "w").bytes() / n, 4.127, 0.001);
  EXPECT_EQ(kernels::quantize_groupwise(w, QuantScheme::Int4, 128, "w").bytes(), n / 2 + 2 * 4 * n / 128);
  EXPECT_EQ(kernels::quantize_groupwise(w, QuantScheme::Int2, 32, "w").bytes(), n / 4 + 2 * 4 * n / 32);
}

// Odd shapes (3 rows, 24 columns, block 8), row ranges and a strided out.
TEST(QuantFormat, OddShapesAndRowRanges) {
  const Tensor w = random_tensor({3, 24}, 15);
  for (int variant = 0; variant < 4; ++variant) {
    const QuantizedWeight q = variant == 0   ? kernels::quantize_nf4(w, false, 8, "w")
                              : variant == 1 ? kernels::quantize_nf4(w, true, 8, "w")
                              : variant == 2 ? kernels::quantize_groupwise(w, QuantScheme::Int4, 8, "w")
                                             : kernels::quantize_groupwise(w, QuantScheme::Int2, 24, "w");
    kernels::check_quantized_weight(q, "w");
    const auto full = dequantize(q).to_vector();
    Tensor wide = Tensor::zeros({2, 30});
    Tensor rows = wide.slice(1, 3, 27);  // rows 30 floats apart
    kernels::dequantize_rows(q, 1, 3, rows);
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t j = 0; j < 24; ++j) EXPECT_EQ(rows.item_at({r, j}), full[(r + 1) * 24 + j]) << variant;
    EXPECT_EQ(wide.item_at({0, 2}), 0.0f);
    EXPECT_EQ(wide.item_at({1, 27}), 0.0f);
    Tensor none = Tensor::empty({0, 24});
    kernels::dequantize_rows(q, 2, 2, none);  // an empty range is fine
    Tensor one = Tensor::empty({1, 24});
    EXPECT_NE(error_of([&] { kernels::dequantize_rows(q, 2, 4, one); }).find("not inside"), std::string::npos);
    EXPECT_NE(error_of([&] { kernels::dequantize_rows(q, 0, 2, one); }).find("out has shape"), std::string::npos);
  }
}

TEST(QuantFormat, QuantizerErrors) {
  const Tensor w = random_tensor({4, 48}, 16);
  const auto expect_error = [](const std::function<void()>& f, const std::string& part) {
    const std::string err = error_of(f);
    EXPECT_NE(err.find("layers.0.q"), std::string::npos) << err;
    EXPECT_NE(err.find(part), std::string::npos) << err;
  };
  expect_error([&] { kernels::quantize_nf4(w, false, 64, "layers.0.q"); }, "divides in_features");
  expect_error([&] { kernels::quantize_nf4(w, false, 12, "layers.0.q"); }, "multiple of 8");
  expect_error([&] { kernels::quantize_groupwise(w, QuantScheme::Int4, 0, "layers.0.q"); }, "multiple of 8");
  expect_error([&] { kernels::quantize_groupwise(w, QuantScheme::NF4, 16, "layers.0.q"); }, "quantize_nf4");
  expect_error([&] { kernels::quantize_nf4(w.view({192}), false, 64, "layers.0.q"); }, "[out_features, in_features]");
  expect_error([&] { kernels::quantize_nf4(w.to(DType::BF16), false, 16, "layers.0.q"); }, "f32");
  Tensor bad = w.clone();
  bad.data<float>()[50] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { kernels::quantize_groupwise(bad, QuantScheme::Int2, 16, "layers.0.q"); }, "row 1, column 2");
  // A transposed (strided) weight is quantized as its logical values.
  const Tensor wt = random_tensor({48, 4}, 17).transpose(0, 1);
  const QuantizedWeight qt = kernels::quantize_groupwise(wt, QuantScheme::Int4, 16, "w");
  const QuantizedWeight qc = kernels::quantize_groupwise(wt.contiguous(), QuantScheme::Int4, 16, "w");
  EXPECT_EQ(dequantize(qt).to_vector(), dequantize(qc).to_vector());
}

// Every check of check_quantized_weight, each from a valid weight with one field broken.
TEST(QuantFormat, CheckQuantizedWeightErrors) {
  const Tensor w = random_tensor({4, 32}, 18);
  const QuantizedWeight nf4 = kernels::quantize_nf4(w, false, 16, "w");
  const QuantizedWeight dq = kernels::quantize_nf4(w, true, 16, "w");
  const QuantizedWeight int4 = kernels::quantize_groupwise(w, QuantScheme::Int4, 16, "w");
  const QuantizedWeight int2 = kernels::quantize_groupwise(w, QuantScheme::Int2, 8, "w");
  for (const QuantizedWeight* q : {&nf4, &dq, &int4, &int2}) kernels::check_quantized_weight(*q, "blocks.1.mlp.up");

  struct Broken {
    const QuantizedWeight& base;
    std::function<void(QuantizedWeight&)> breaks;
    std::string part;
  };
  const std::vector<Broken> cases{
      {nf4, [](QuantizedWeight& q) { q.out_features = 0; }, "must be positive"},
      {nf4, [](QuantizedWeight& q) { q.block = 12; }, "multiple of 8"},
      {int4, [](QuantizedWeight& q) { q.block = 24; }, "divides in_features"},
      {int4, [](QuantizedWeight& q) { q.block = -16; }, "block -16"},
      {nf4, [](QuantizedWeight& q) { q.packed = Tensor(); }, "no packed"},
      {nf4, [](QuantizedWeight& q) { q.packed = Tensor::zeros({q.packed.numel() - 1}, DType::U8); }, "packed has shape"},
      {int2, [](QuantizedWeight& q) { q.packed = Tensor::zeros({q.numel() / 2}, DType::U8); }, "packed has shape"},
      {nf4, [](QuantizedWeight& q) { q.packed = Tensor::zeros({q.packed.numel()}, DType::I8); }, "packed is i8"},
      {nf4, [](QuantizedWeight& q) { q.out_features = 8; }, "packed has shape"},  // a checkpoint for another shape
      {nf4, [](QuantizedWeight& q) { q.absmax = Tensor(); }, "no absmax"},
      {nf4, [](QuantizedWeight& q) { q.absmax = Tensor::zeros({4}); }, "absmax has shape"},
      {nf4, [](QuantizedWeight& q) { q.absmax = Tensor::zeros({8}, DType::BF16); }, "absmax is bf16"},
      {nf4, [](QuantizedWeight& q) { q.absmax = Tensor::zeros({16}).as_strided({8}, {2}, 0); },
       "strided"},
      {nf4, [](QuantizedWeight& q) { q.scales = Tensor::zeros({4, 2}); }, "scales tensor"},
      {nf4, [](QuantizedWeight& q) { q.zeros = Tensor::zeros({4, 2}); }, "zeros tensor"},
      {nf4, [](QuantizedWeight& q) { q.absmax_scales = Tensor::zeros({1}); }, "absmax_scales tensor"},
      {dq, [](QuantizedWeight& q) { q.absmax = Tensor::zeros({8}); }, "absmax tensor"},
      {dq, [](QuantizedWeight& q) { q.absmax_codes = Tensor::zeros({9}, DType::U8); }, "absmax_codes has shape"},
      {dq, [](QuantizedWeight& q) { q.absmax_codes = Tensor::zeros({8}); }, "absmax_codes is f32"},
      {dq, [](QuantizedWeight& q) { q.absmax_scales = Tensor(); }, "no absmax_scales"},
      {dq, [](QuantizedWeight& q) { q.absmax_scales = Tensor::zeros({2}); }, "absmax_scales has shape"},
      {dq, [](QuantizedWeight& q) { q.absmax_offset = std::numeric_limits<float>::infinity(); }, "absmax_offset"},
      {int4, [](QuantizedWeight& q) { q.scales = Tensor::zeros({2, 4}); }, "scales has shape"},
      {int4, [](QuantizedWeight& q) { q.scales = Tensor(); }, "no scales"},
      {int2, [](QuantizedWeight& q) { q.zeros = Tensor::zeros({4, 4}, DType::I32); }, "zeros is i32"},
      {int2, [](QuantizedWeight& q) { q.zeros = Tensor::zeros({4, 3}); }, "zeros has shape"},
      {int4, [](QuantizedWeight& q) { q.absmax = Tensor::zeros({8}); }, "absmax tensor"},
      {int4, [](QuantizedWeight& q) { q.absmax_codes = Tensor::zeros({8}, DType::U8); }, "absmax_codes tensor"},
  };
  for (const Broken& c : cases) {
    QuantizedWeight q = c.base;
    c.breaks(q);
    const std::string err = error_of([&] { kernels::check_quantized_weight(q, "blocks.1.mlp.up"); });
    EXPECT_NE(err.find("blocks.1.mlp.up"), std::string::npos) << err;
    EXPECT_NE(err.find(c.part), std::string::npos) << "expected '" << c.part << "' in: " << err;
    // The decode refuses the same weight.
    Tensor out = Tensor::empty({std::max<int64_t>(q.out_features, 1), q.in_features});
    EXPECT_NE(error_of([&] { kernels::dequantize_rows(q, 0, 1, out); }), "(no error)") << c.part;
  }
}
