// models/lora_merge.h: QA-LoRA's exact merge into the zero points against the ALGORITHMS.md §9
// vector and, on random int4/int2 weights, against a naive double-precision model of the base and
// the adapter; the naive requantizing merge's error beside it; write_gptq's refusal of fractional
// zeros; every error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "data/quant_checkpoint.h"
#include "models/lora_merge.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;
using kernels::QuantizedWeight;
using kernels::QuantScheme;

namespace {

constexpr double kEps = std::numeric_limits<float>::epsilon();

std::vector<float> values(const Tensor& t) {
  const Tensor c = t.contiguous();
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}

// Element e's code, unpacked here independently of the library: 8 / bits codes per byte, the
// first in the most significant bits.
int code_at(const QuantizedWeight& w, int64_t e) {
  const int bits = w.scheme == QuantScheme::Int2 ? 2 : 4;
  const int per_byte = 8 / bits;
  const int byte = w.packed.data<uint8_t>()[e / per_byte];
  return (byte >> (8 - bits * (e % per_byte + 1))) & ((1 << bits) - 1);
}

float scale_of(const QuantizedWeight& w, int64_t o, int64_t i) {
  return w.scales.data<float>()[o * (w.in_features / w.block) + i / w.block];
}
float zero_of(const QuantizedWeight& w, int64_t o, int64_t i) {
  return w.zeros.data<float>()[o * (w.in_features / w.block) + i / w.block];
}

Tensor dequantize(const QuantizedWeight& w) {
  Tensor out = Tensor::empty({w.out_features, w.in_features});
  kernels::dequantize_rows(w, 0, w.out_features, out);
  return out;
}

Tensor product(const Tensor& x, const QuantizedWeight& w) {
  Tensor y = Tensor::empty({x.size(0), w.out_features});
  kernels::quant_matmul(x, w, y);
  return y;
}

LoraAdapter qa_adapter(int64_t out, int64_t in, int64_t r, double alpha, int64_t g, const std::vector<float>& a,
                       const std::vector<float>& b, const std::string& module = "layers.0.q_proj") {
  LoraSpec spec;
  spec.r = r, spec.alpha = alpha, spec.qa_group = g;
  LoraAdapter adapter(module, out, in, ShardSpec{}, spec);
  adapter.A.value.copy_(Tensor::from_vector(a, adapter.A.value.shape()));
  adapter.B.value.copy_(Tensor::from_vector(b, adapter.B.value.shape()));
  return adapter;
}

// The adapter model in double, from the packed codes and the factors: y = x·Ŵᵀ + (α/r)·B·A·pool(x).
struct NaiveModel {
  const QuantizedWeight& base;
  std::vector<float> A, B;
  int64_t r, g;
  double scaling;
  double w(int64_t o, int64_t i) const {  // ŵ = s·(q − z)
    return double(scale_of(base, o, i)) * (code_at(base, o * base.in_features + i) - double(zero_of(base, o, i)));
  }
  double ba(int64_t o, int64_t k) const {  // (BA)[o, k]
    double v = 0;
    for (int64_t j = 0; j < r; ++j) v += double(B[o * r + j]) * A[j * (base.in_features / g) + k];
    return v;
  }
  double ba_abs(int64_t o, int64_t k) const {  // (|B||A|)[o, k]: the scale of ba's rounding
    double v = 0;
    for (int64_t j = 0; j < r; ++j) v += std::fabs(double(B[o * r + j]) * A[j * (base.in_features / g) + k]);
    return v;
  }
  std::vector<double> forward(const Tensor& x) const {
    const int64_t rows = x.size(0), in = base.in_features, out = base.out_features;
    const float* px = x.data<float>();
    std::vector<double> y(rows * out, 0.0);
    for (int64_t n = 0; n < rows; ++n)
      for (int64_t o = 0; o < out; ++o) {
        double v = 0;
        for (int64_t i = 0; i < in; ++i) v += double(px[n * in + i]) * w(o, i);
        for (int64_t k = 0; k < in / g; ++k) {
          double mean = 0;
          for (int64_t i = k * g; i < (k + 1) * g; ++i) mean += px[n * in + i];
          v += scaling * ba(o, k) * (mean / g);
        }
        y[n * out + o] = v;
      }
    return y;
  }
};

struct RandomCase {
  QuantScheme scheme;
  int64_t group;
};

}  // namespace

// ALGORITHMS.md §9: x = [1, 3, 2, 4], g = 2, A = [[0.5, −1]], B = [[2]], scale 1, s = [0.1, 0.2]
// → z' = z − [5, −5], Δy = −4. anvil's groups are multiples of 8, so each group of 2 is repeated
// to fill a group of 8: the pooled x̃ = [2, 3] and Δy = −4 stay, ΔW = (BA)/g is 4× smaller, and
// the scales are 4× smaller too ([0.025, 0.05]) so that ΔW/s = [5, −5] as published.
TEST(LoraMerge, PublishedVector) {
  QuantizedWeight base;
  base.scheme = QuantScheme::Int4;
  base.out_features = 1, base.in_features = 16, base.block = 8;
  base.packed = Tensor::empty({8}, DType::U8);
  for (int i = 0; i < 8; ++i) base.packed.data<uint8_t>()[i] = static_cast<uint8_t>(((2 * i) << 4) | (2 * i + 1));
  base.scales = Tensor::from_vector(std::vector<float>{0.025f, 0.05f}, {1, 2});
  base.zeros = Tensor::from_vector(std::vector<float>{8.0f, 7.0f}, {1, 2});
  const LoraAdapter adapter = qa_adapter(1, 16, 1, 1.0, 8, {0.5f, -1.0f}, {2.0f});

  const QuantizedWeight merged = merge_qa_lora(base, adapter, "qa");
  EXPECT_EQ(merged.packed.data<uint8_t>(), base.packed.data<uint8_t>());  // codes and scales shared
  EXPECT_EQ(merged.scales.data<float>(), base.scales.data<float>());
  EXPECT_FLOAT_EQ(merged.zeros.data<float>()[0], 8.0f - 5.0f);
  EXPECT_FLOAT_EQ(merged.zeros.data<float>()[1], 7.0f + 5.0f);

  std::vector<float> xv;
  for (int i = 0; i < 4; ++i) xv.insert(xv.end(), {1.0f, 3.0f});
  for (int i = 0; i < 4; ++i) xv.insert(xv.end(), {2.0f, 4.0f});
  const Tensor x = Tensor::from_vector(xv, {1, 16});
  const Tensor wb = dequantize(base), wm = dequantize(merged);
  double magnitude = 0;  // Σ|x|(|ŵ| + |ŵ'|): the scale of the products' rounding
  for (int i = 0; i < 16; ++i) magnitude += xv[i] * (std::fabs(wb.data<float>()[i]) + std::fabs(wm.data<float>()[i]));
  const double tol = 32 * kEps * magnitude;
  EXPECT_NEAR(product(x, merged).data<float>()[0] - product(x, base).data<float>()[0], -4.0, tol);
  Tensor dy = Tensor::zeros({1, 1});
  adapter.add_forward(x, dy, DropoutKey{});
  EXPECT_NEAR(dy.data<float>()[0], -4.0, 1e-6);
  // Ŵ' − Ŵ is the adapter's ΔW: (BA)/g = [1/8] × 8, [−1/4] × 8 (z' is an integer here, so each
  // ŵ = s·(q − z) rounds once).
  for (int i = 0; i < 16; ++i) {
    const double tol = kEps * (std::fabs(wm.data<float>()[i]) + std::fabs(wb.data<float>()[i]));
    EXPECT_NEAR(wm.data<float>()[i] - wb.data<float>()[i], i < 8 ? 0.125 : -0.25, tol) << i;
  }
  const MergeError e = merge_output_error(merged, base, adapter, x);
  EXPECT_LE(e.max_abs, tol);
}

// Random int4/int2 weights (W uniform with σ ≈ 0.02, odd out, several groups, r = 3, random
// non-zero A and B with ΔW about one quantization step): the exact merge against the double model,
// and the naive requantizing merge's error beside it.
TEST(LoraMerge, RandomWeightsExactVersusRequantized) {
  const int64_t out = 7, in = 48, r = 3, rows = 5;
  const double alpha = 6.0;
  uint32_t stream = 100;
  for (const RandomCase c : {RandomCase{QuantScheme::Int4, 16}, RandomCase{QuantScheme::Int2, 16},
                             RandomCase{QuantScheme::Int4, 8}, RandomCase{QuantScheme::Int2, 24}}) {
    const std::string label = std::string(kernels::quant_scheme_name(c.scheme)) + " g=" + std::to_string(c.group);
    const int64_t g = c.group, groups = in / g;
    const QuantizedWeight base =
        kernels::quantize_groupwise(random_tensor({out, in}, stream++, -0.035f, 0.035f), c.scheme, g, "layer");
    std::vector<float> a = values(random_tensor({r, groups}, stream++));
    std::vector<float> b = values(random_tensor({out, r}, stream++));
    // Scale B so that the rms of ΔW = (α/r)·(BA)/g is the mean quantization step.
    double step = 0, rms = 0;
    for (float s : values(base.scales)) step += s / double(out * groups);
    {
      const LoraAdapter unit = qa_adapter(out, in, r, alpha, g, a, b);
      for (float d : values(unit.delta_weight())) rms += double(d) * d / double(out * in);
    }
    for (float& v : b) v = static_cast<float>(v * step / std::sqrt(rms));
    const LoraAdapter adapter = qa_adapter(out, in, r, alpha, g, a, b);
    const NaiveModel naive{base, a, b, r, g, alpha / r};

    const QuantizedWeight merged = merge_qa_lora(base, adapter, "layer");
    // z' = z − (α/r)·(BA)/(g·s), against the double formula; ΔW's own f32 rounding is (r + 2)·ε of |B||A|.
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < groups; ++k) {
        const double s = scale_of(base, o, k * g), z = zero_of(base, o, k * g);
        const double expect = z - naive.scaling * naive.ba(o, k) / (g * s);
        const double tol = 2 * kEps * std::fabs(expect) + (r + 2) * kEps * naive.scaling * naive.ba_abs(o, k) / (g * s);
        const float got = zero_of(merged, o, k * g);
        EXPECT_NEAR(got, expect, tol) << label << " row " << o << " group " << k;
      }

    // y' = x·Ŵ'ᵀ in f32 against the double model. Bound: each ŵ' = s·(q − z') carries ≲ 3ε of
    // s·(|q| + |z'|) plus ΔW's (r + 3)ε of its |B||A| term, and the f32 dot product over `in`
    // adds ≤ in·ε of Σ|x||ŵ'|.
    const Tensor x = random_tensor({rows, in}, stream++);
    const std::vector<double> y_ref = naive.forward(x);
    const Tensor y = product(x, merged);
    double max_abs = 0, max_ref = 0;
    for (int64_t n = 0; n < rows; ++n)
      for (int64_t o = 0; o < out; ++o) {
        double bound = 0;
        for (int64_t i = 0; i < in; ++i) {
          const double s = scale_of(merged, o, i), zq = std::fabs(zero_of(merged, o, i));
          const double xi = std::fabs(x.data<float>()[n * in + i]);
          const double wi = s * (code_at(merged, o * in + i) + zq);
          bound += xi * (wi * (in + 5) + (r + 3) * naive.scaling * naive.ba_abs(o, i / g) / g);
        }
        const double err = std::fabs(y.data<float>()[n * out + o] - y_ref[n * out + o]);
        EXPECT_LE(err, kEps * bound) << label << " row " << n << " out " << o;
        max_abs = std::max(max_abs, err);
        max_ref = std::max(max_ref, std::fabs(y_ref[n * out + o]));
      }
    const double exact_rel = max_abs / max_ref;
    EXPECT_LE(exact_rel, 1e-5) << label;  // the bar

    // Against the adapter model in f32 (merge_output_error), and the naive merge beside it.
    const MergeError exact = merge_output_error(merged, base, adapter, x);
    const QuantizedWeight requant = requantize_merged(base, adapter.delta_weight(), "layer");
    EXPECT_EQ(requant.scheme, base.scheme);
    EXPECT_EQ(requant.block, base.block);
    const MergeError naive_merge = merge_output_error(requant, base, adapter, x);
    std::printf("[ %s ] exact merge: max_rel %.3g vs the double model, %.3g (max_abs %.3g) vs the f32 adapter "
                "model; requantized: max_rel %.3g (max_abs %.3g)\n",
                label.c_str(), exact_rel, exact.max_rel, exact.max_abs, naive_merge.max_rel, naive_merge.max_abs);
    EXPECT_LE(exact.max_rel, 1e-5) << label;
    EXPECT_GT(naive_merge.max_rel, 100 * std::max(exact.max_rel, exact_rel)) << label;

    // The requantized weight is a fresh quantization of Ŵ + ΔW (AutoAWQ's, whose grid need not
    // reach 0): each element within half its new step when the group's range holds 0, and further
    // off by the range's distance from 0 when it does not (the zero point clamps at 0 or qmax) —
    // which happens here, since ΔW of about a step can shift a whole coarse group to one sign.
    const Tensor target = dequantize(base), got = dequantize(requant), delta = adapter.delta_weight();
    auto t_at = [&](int64_t o, int64_t i) {
      return double(target.data<float>()[o * in + i]) + delta.data<float>()[o * in + i];
    };
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < groups; ++k) {
        double lo = t_at(o, k * g), hi = lo;
        for (int64_t i = k * g; i < (k + 1) * g; ++i) lo = std::min(lo, t_at(o, i)), hi = std::max(hi, t_at(o, i));
        const double off_zero = std::max({0.0, lo, -hi});
        for (int64_t i = k * g; i < (k + 1) * g; ++i) {
          const double t = t_at(o, i);
          const double bound = scale_of(requant, o, i) * 0.5 * (1 + 1e-4) + off_zero + 8 * kEps * std::fabs(t);
          EXPECT_LE(std::fabs(got.data<float>()[o * in + i] - t), bound) << label << " row " << o << " col " << i;
        }
      }
  }
}

// The naive merge on an nf4 base keeps its block and double quantization, and lands on Ŵ + ΔW
// within NF4's rounding: t/A goes to the nearest code, at most half NF4's widest gap (−1 to −0.6962)
// of the block's absmax A away, and a double-quantized A' decodes |A' − A| off, scaled by |code| ≤ 1.
TEST(LoraMerge, RequantizeNf4KeepsItsFormat) {
  const int64_t out = 5, in = 128, block = 64;
  double half_gap = 0;
  for (int k = 0; k < 15; ++k)
    half_gap = std::max(half_gap, (double(kernels::nf4_values()[k + 1]) - kernels::nf4_values()[k]) / 2);
  for (const bool dq : {false, true}) {
    const QuantizedWeight base = kernels::quantize_nf4(random_tensor({out, in}, 300, -0.035f, 0.035f), dq, block, "nf4");
    const Tensor delta = random_tensor({out, in}, 301, -0.05f, 0.05f);  // larger than the rounding: must show
    const QuantizedWeight merged = requantize_merged(base, delta, "nf4");
    EXPECT_EQ(merged.scheme, QuantScheme::NF4);
    EXPECT_EQ(merged.block, block);
    EXPECT_EQ(merged.double_quant(), dq);
    const Tensor wb = dequantize(base), wm = dequantize(merged);
    for (int64_t blk = 0; blk < out * in / block; ++blk) {
      double amax = 0;
      for (int64_t e = blk * block; e < (blk + 1) * block; ++e)
        amax = std::max(amax, std::fabs(double(wb.data<float>()[e]) + delta.data<float>()[e]));
      double decoded = amax;
      if (dq)
        decoded = kernels::double_quant_absmax(kernels::dynamic_map_signed()[merged.absmax_codes.data<uint8_t>()[blk]],
                                               merged.absmax_scales.data<float>()[blk / kernels::kDoubleQuantBlock],
                                               merged.absmax_offset);
      const double bound = half_gap * amax * (1 + 4 * kEps) + std::fabs(decoded - amax) + 4 * kEps * amax;
      for (int64_t e = blk * block; e < (blk + 1) * block; ++e) {
        const double t = double(wb.data<float>()[e]) + delta.data<float>()[e];
        EXPECT_LE(std::fabs(wm.data<float>()[e] - t), bound) << "dq " << dq << " e " << e;
      }
    }
  }
}

// Merged zeros are fractional: GPTQ's integer qzeros cannot take them, and write_gptq says so.
TEST(LoraMerge, WriteGptqRefusesMergedZeros) {
  const int64_t out = 8, in = 32, g = 16;
  const QuantizedWeight base =
      kernels::quantize_groupwise(random_tensor({out, in}, 400, -0.035f, 0.035f), QuantScheme::Int4, g, "layer");
  const LoraAdapter adapter = qa_adapter(out, in, 2, 2.0, g, values(random_tensor({2, in / g}, 401)),
                                         values(random_tensor({out, 2}, 402, -0.01f, 0.01f)));
  const QuantizedWeight merged = merge_qa_lora(base, adapter, "layer");
  GptqConfig config;
  config.bits = 4, config.group_size = g;
  TensorMap tensors;
  write_gptq(base, Tensor(), config, DType::F16, "layer", tensors);  // the base itself writes
  const std::string err = error_of([&] { write_gptq(merged, Tensor(), config, DType::F16, "layer", tensors); });
  EXPECT_NE(err.find("QA-LoRA"), std::string::npos) << err;
}

TEST(LoraMerge, Errors) {
  const int64_t out = 7, in = 48, g = 16;
  const std::string module = "layers.0.q_proj";
  const Tensor w = random_tensor({out, in}, 500, -0.035f, 0.035f);
  const QuantizedWeight int4 = kernels::quantize_groupwise(w, QuantScheme::Int4, g, module);
  auto adapter = [&](int64_t o, int64_t i, int64_t group) {
    return qa_adapter(o, i, 2, 2.0, group, values(random_tensor({2, group ? i / group : i}, 501)),
                      values(random_tensor({o, 2}, 502)), module);
  };
  auto expect_error = [&](const std::function<void()>& f, const std::vector<std::string>& parts) {
    const std::string err = error_of(f);
    for (const std::string& p : parts) EXPECT_NE(err.find(p), std::string::npos) << "want '" << p << "' in: " << err;
  };
  const LoraAdapter good = adapter(out, in, g);

  const QuantizedWeight nf4 = kernels::quantize_nf4(random_tensor({out, 64}, 503), false, 64, module);
  expect_error([&] { merge_qa_lora(nf4, adapter(out, 64, 64), module); },
               {module, "an NF4 base has no zero points", "anvil convert --merge", "naive merge"});
  expect_error([&] { merge_qa_lora(int4, adapter(out, in, 0), module); },
               {module, "plain LoRA (lora.qa_group 0)", "not constant within a quantization group"});
  expect_error([&] { merge_qa_lora(int4, adapter(out, in, 8), module); },
               {module, "groups of 8", "groups of 16", "train with lora.qa_group 16"});
  expect_error([&] { merge_qa_lora(int4, adapter(out + 1, in, g), module); }, {module, "[8, 48]", "[7, 48]"});
  expect_error([&] { merge_qa_lora(int4, adapter(out, in - g, g), module); }, {module, "[7, 32]", "[7, 48]"});
  {
    ShardSplit split;
    split.axis = Axis::TP, split.dim = 0, split.full_size = 2 * out, split.runs = {ShardRun{0, 0, out}};
    ShardSpec shard;
    shard.splits = {split};
    LoraSpec spec;
    spec.r = 2, spec.qa_group = g;
    const LoraAdapter sharded(module, out, in, shard, spec);
    expect_error([&] { merge_qa_lora(int4, sharded, module); }, {module, "split over tensor parallelism"});
  }
  {
    std::vector<float> a = values(random_tensor({2, in / g}, 504));
    a[1] = std::numeric_limits<float>::quiet_NaN();
    const LoraAdapter bad = qa_adapter(out, in, 2, 2.0, g, a, values(random_tensor({out, 2}, 505)), module);
    expect_error([&] { merge_qa_lora(int4, bad, module); }, {module, "merged zero point", "non-finite"});
  }
  QuantizedWeight broken = int4;
  broken.zeros = Tensor::zeros({out, 2});
  expect_error([&] { merge_qa_lora(broken, good, module); }, {"merge_qa_lora", module, "zeros"});

  expect_error([&] { requantize_merged(int4, Tensor::zeros({out, in - 8}), module); },
               {"requantize_merged", module, "[7, 48]", "delta_weight()"});
  expect_error([&] { requantize_merged(int4, Tensor(), module); }, {module, "undefined"});

  const QuantizedWeight merged = merge_qa_lora(int4, good, module);
  const QuantizedWeight narrow = kernels::quantize_groupwise(random_tensor({out, 32}, 506), QuantScheme::Int4, g, module);
  expect_error([&] { merge_output_error(narrow, int4, good, random_tensor({2, in}, 507)); },
               {"merge_output_error", "[7, 32]", "[7, 48]"});
  expect_error([&] { merge_output_error(merged, int4, good, random_tensor({2, 32}, 508)); },
               {"merge_output_error", "[rows, 48]"});
}
