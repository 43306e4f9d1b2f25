// kernels/quant.h's CPU products quant_matmul (y = x·Ŵᵀ) and quant_matmul_input_grad (dx = dy·Ŵ)
// for nf4 (plain and double-quantized absmax), int4 and int2, on both the scalar and the AVX2
// kernels, against Ŵ decoded here from the format's description (not the library's decoder) and
// a naive double-precision loop. Weights are random bytes with random scales, zeros (fractional,
// as after a QA-LoRA merge) and absmaxes, so every code and group occurs; then weights quantized
// by quantize_nf4/quantize_groupwise, checked against dequantize_rows.
//
// Shapes: rows 1..8 take the GEMV kernels, more rows the dequantized-tile sgemm path; `out` not a
// multiple of 8; blocks that are and are not multiples of the kernels' unroll (8, 24, 32, 64, 128).
//
// Tolerance: each output is a K-term f32 sum of f32 products, in an order the kernel chooses, so
// |err| ≤ (K + 4)·2⁻²⁴·Σ_k |x_k|·|w_k| (+ 2⁻²⁴|y₀| when accumulating): the classic bound for any
// summation order, checked per element. |w_k| is |ŵ_k| for nf4; for intN it is s·(q + |z|), since
// the AVX2 kernel sums s·Σ x·q − s·z·Σ x (its terms are that large before they cancel). A wrong
// code, scale or zero moves an output by about one term, |x||ŵ| ≈ Σ/K, far above the bound.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/quant_matmul.h"
#include "kernels/quant.h"
#include "tests/support/kernel_check.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;
using kernels::QuantizedWeight;
using kernels::QuantScheme;

namespace {

// ALGORITHMS.md §9, the published NF4 table.
constexpr double kNF4[16] = {-1.0,
                             -0.6961928009986877,
                             -0.5250730514526367,
                             -0.39491748809814453,
                             -0.28444138169288635,
                             -0.18477343022823334,
                             -0.09105003625154495,
                             0.0,
                             0.07958029955625534,
                             0.16093020141124725,
                             0.24611230194568634,
                             0.33791524171829224,
                             0.44070982933044434,
                             0.5626170039176941,
                             0.7229568362236023,
                             1.0};

enum class Kind { NF4, NF4Double, Int4, Int2 };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::NF4: return "nf4";
    case Kind::NF4Double: return "nf4+dq";
    case Kind::Int4: return "int4";
    default: return "int2";
  }
}

Tensor random_bytes(int64_t n, std::mt19937& rng) {
  Tensor t = Tensor::empty({n}, DType::U8);
  uint8_t* p = t.data<uint8_t>();
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(rng() & 0xff);
  return t;
}

Tensor random_floats(const Shape& shape, float low, float high, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(low, high);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& f : v) f = u(rng);
  return Tensor::from_vector(v, shape);
}

// A weight of random codes and group parameters in the given scheme.
QuantizedWeight random_weight(Kind kind, int64_t out, int64_t in, int64_t block, uint32_t seed) {
  std::mt19937 rng(seed);
  QuantizedWeight w;
  w.scheme = kind == Kind::Int4 ? QuantScheme::Int4 : kind == Kind::Int2 ? QuantScheme::Int2 : QuantScheme::NF4;
  w.out_features = out;
  w.in_features = in;
  w.block = block;
  const int bits = kernels::quant_bits(w.scheme);
  const int64_t groups = out * in / block;
  w.packed = random_bytes(out * in * bits / 8, rng);
  if (kind == Kind::NF4) {
    w.absmax = random_floats({groups}, 0.05f, 2.0f, rng);
  } else if (kind == Kind::NF4Double) {
    w.absmax_codes = random_bytes(groups, rng);
    w.absmax_scales = random_floats({(groups + 255) / 256}, 0.2f, 1.5f, rng);
    w.absmax_offset = 0.7f;
  } else {
    const float qmax = static_cast<float>((1 << bits) - 1);
    w.scales = random_floats({out, in / block}, 0.01f, 0.2f, rng);
    w.zeros = random_floats({out, in / block}, 0.0f, qmax, rng);
  }
  return w;
}

// Ŵ [out, in] in double, decoded from the format as quant.h states it; `magnitude` gets the size
// of each weight's terms in the kernels' sums (see the tolerance above).
std::vector<double> decode(const QuantizedWeight& w, std::vector<double>* magnitude = nullptr) {
  const int bits = kernels::quant_bits(w.scheme), per = 8 / bits;
  const int64_t in = w.in_features, n = w.numel();
  const uint8_t* packed = w.packed.data<uint8_t>();
  std::vector<double> out(static_cast<size_t>(n));
  if (magnitude) magnitude->assign(static_cast<size_t>(n), 0.0);
  for (int64_t e = 0; e < n; ++e) {
    const int shift = 8 - bits * (1 + static_cast<int>(e % per));  // the first element in the high bits
    const int code = (packed[e / per] >> shift) & ((1 << bits) - 1);
    const int64_t b = e / w.block;
    if (w.scheme == QuantScheme::NF4) {
      const double absmax =
          w.double_quant() ? static_cast<double>(kernels::dynamic_map_signed()[w.absmax_codes.data<uint8_t>()[b]]) *
                                     w.absmax_scales.data<float>()[b / 256] +
                                 w.absmax_offset
                           : w.absmax.data<float>()[b];
      out[e] = kNF4[code] * absmax;
      if (magnitude) (*magnitude)[e] = std::fabs(out[e]);
    } else {
      const int64_t o = e / in, g = (e % in) / w.block;  // == b, spelled as the [out, in / block] index
      const double s = w.scales.item_at({o, g}), z = w.zeros.item_at({o, g});
      out[e] = s * (code - z);
      if (magnitude) (*magnitude)[e] = std::fabs(s) * (code + std::fabs(z));
    }
  }
  return out;
}

// c [rows, n_c] = a [rows, n_a] · (forward ? Ŵᵀ : Ŵ), its per-element error bound, and c0 added.
struct Reference {
  std::vector<double> value, bound;
};

Reference reference(const std::vector<double>& wd, const std::vector<double>& wm, int64_t out, int64_t in,
                    const Tensor& a, bool forward, const Tensor* c0) {
  const int64_t rows = a.numel() / a.size(-1);
  const std::vector<float> av = a.contiguous().to_vector();
  const std::vector<float> c0v = c0 ? c0->contiguous().to_vector() : std::vector<float>{};
  const int64_t n_a = forward ? in : out, n_c = forward ? out : in;
  const double u = std::ldexp(1.0, -24);
  Reference r;
  r.value.assign(static_cast<size_t>(rows * n_c), 0.0);
  r.bound.assign(r.value.size(), 0.0);
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t j = 0; j < n_c; ++j) {
      double s = 0, abs = 0;
      for (int64_t k = 0; k < n_a; ++k) {
        const int64_t e = forward ? j * in + k : k * in + j;
        s += av[m * n_a + k] * wd[e];
        abs += std::fabs(av[m * n_a + k]) * wm[e];
      }
      const size_t i = static_cast<size_t>(m * n_c + j);
      const double old = c0 ? c0v[i] : 0.0;
      r.value[i] = s + old;
      r.bound[i] = (n_a + 4) * u * abs + 2 * u * std::fabs(old) + 1e-30;
    }
  return r;
}

// Elements of `got` outside the bound, as a message (empty when all are inside).
std::string violations(const Tensor& got, const Reference& want) {
  const std::vector<float> g = got.contiguous().to_vector();
  if (g.size() != want.value.size()) return "size " + std::to_string(g.size()) + " vs " + std::to_string(want.value.size());
  int bad = 0;
  std::string first;
  for (size_t i = 0; i < g.size(); ++i) {
    const double err = std::fabs(g[i] - want.value[i]);
    if (!(err <= want.bound[i])) {
      if (bad++ == 0)
        first = "element " + std::to_string(i) + ": got " + std::to_string(g[i]) + " want " +
                std::to_string(want.value[i]) + " bound " + std::to_string(want.bound[i]);
    }
  }
  return bad ? std::to_string(bad) + " outside the bound, first " + first : "";
}

struct Shape3 {
  int64_t out, in, block;
};

// Runs both products for every row count and accumulate flag on the current kernels.
void check_products(Kind kind, const Shape3& s, uint32_t seed, const std::string& path) {
  const QuantizedWeight w = random_weight(kind, s.out, s.in, s.block, seed);
  std::vector<double> wm;
  const std::vector<double> wd = decode(w, &wm);
  for (int64_t rows : {1, 2, 3, 5, 8, 9, 17, 100})
    for (bool accumulate : {false, true}) {
      const std::string where = std::string(kind_name(kind)) + " out=" + std::to_string(s.out) +
                                " in=" + std::to_string(s.in) + " block=" + std::to_string(s.block) +
                                " rows=" + std::to_string(rows) + (accumulate ? " accumulate" : "") + " (" +
                                path + ")";
      const uint32_t stream = seed * 131 + static_cast<uint32_t>(rows) * 2 + accumulate;
      {
        const Tensor x = random_tensor({rows, s.in}, stream);
        Tensor y = accumulate ? random_tensor({rows, s.out}, stream + 7)
                              : Tensor::full({rows, s.out}, std::numeric_limits<double>::quiet_NaN());
        const Tensor y0 = y.clone();
        kernels::quant_matmul(x, w, y, accumulate);
        EXPECT_EQ(violations(y, reference(wd, wm, s.out, s.in, x, true, accumulate ? &y0 : nullptr)), "")
            << "quant_matmul " << where;
      }
      {
        const Tensor dy = random_tensor({rows, s.out}, stream + 3);
        Tensor dx = accumulate ? random_tensor({rows, s.in}, stream + 9)
                               : Tensor::full({rows, s.in}, std::numeric_limits<double>::quiet_NaN());
        const Tensor dx0 = dx.clone();
        kernels::quant_matmul_input_grad(dy, w, dx, accumulate);
        EXPECT_EQ(violations(dx, reference(wd, wm, s.out, s.in, dy, false, accumulate ? &dx0 : nullptr)), "")
            << "quant_matmul_input_grad " << where;
      }
    }
}

const Shape3 kShapes[][3] = {
    {{75, 256, 64}, {13, 64, 64}, {7, 192, 64}},     // nf4: 300 blocks (two double-quant scales)
    {{75, 256, 64}, {13, 128, 32}, {7, 192, 64}},    // nf4 + double quant
    {{75, 384, 128}, {11, 40, 8}, {9, 72, 24}},      // int4
    {{75, 256, 64}, {21, 96, 32}, {5, 24, 8}},       // int2
};
constexpr Kind kKinds[] = {Kind::NF4, Kind::NF4Double, Kind::Int4, Kind::Int2};

void check_all_kinds(const std::string& path) {
  uint32_t seed = 1;
  for (int k = 0; k < 4; ++k)
    for (const Shape3& s : kShapes[k]) check_products(kKinds[k], s, seed++, path);
}

}  // namespace

TEST(QuantMatmul, ScalarKernelsMatchTheDecodedWeight) {
  kernels::cpu::ScalarQuantKernels scalar;
  ASSERT_FALSE(kernels::cpu::quant_avx2_active());
  check_all_kinds("scalar");
}

// The run-time choice takes the AVX2 kernels exactly when the CPU has AVX2 and FMA and the
// environment does not force the scalar path; where it does, they match the decoded weight.
TEST(QuantMatmul, Avx2KernelsAreChosenByTheCpuAndMatchTheDecodedWeight) {
  const char* env = std::getenv("ANVIL_QUANT_KERNELS");
  const bool forced_scalar = env != nullptr && std::string(env) == "scalar";
  const bool expected = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !forced_scalar;
  ASSERT_EQ(kernels::cpu::quant_avx2_active(), expected);
  if (expected) check_all_kinds("avx2");
}

// Several tiles, K chunks, strips and threads: out > 64 and 256 rows, in > 1024 columns.
TEST(QuantMatmul, LargeShapesSplitAcrossThreadsAndTiles) {
  const Shape3 s{300, 1280, 64};
  for (Kind kind : {Kind::NF4Double, Kind::Int4, Kind::Int2}) {
    const QuantizedWeight w = random_weight(kind, s.out, s.in, s.block, 40 + static_cast<uint32_t>(kind));
    std::vector<double> wm;
    const std::vector<double> wd = decode(w, &wm);
    for (bool scalar : {true, false}) {
      if (!scalar && !kernels::cpu::quant_avx2_active()) continue;
      std::unique_ptr<kernels::cpu::ScalarQuantKernels> scope;
      if (scalar) scope = std::make_unique<kernels::cpu::ScalarQuantKernels>();
      with_threads(2, [&] {
        for (int64_t rows : {1, 6, 20}) {
          const std::string where =
              std::string(kind_name(kind)) + " rows=" + std::to_string(rows) + (scalar ? " scalar" : " avx2");
          const Tensor x = random_tensor({rows, s.in}, 90 + rows);
          Tensor y = Tensor::empty({rows, s.out});
          kernels::quant_matmul(x, w, y);
          EXPECT_EQ(violations(y, reference(wd, wm, s.out, s.in, x, true, nullptr)), "") << where;
          const Tensor dy = random_tensor({rows, s.out}, 95 + rows);
          Tensor dx = Tensor::empty({rows, s.in});
          kernels::quant_matmul_input_grad(dy, w, dx);
          EXPECT_EQ(violations(dx, reference(wd, wm, s.out, s.in, dy, false, nullptr)), "") << where;
        }
      });
    }
  }
}

// Weights quantized by the library: the products agree with its reference decoder dequantize_rows
// (a second, independent decode of the same bytes) times the naive loop.
TEST(QuantMatmul, QuantizedWeightsMatchDequantizeRows) {
  const Tensor dense = random_tensor({37, 256}, 5, -0.5f, 0.5f);
  const QuantizedWeight ws[] = {kernels::quantize_nf4(dense, false, 64, "test"),
                                kernels::quantize_nf4(dense, true, 64, "test"),
                                kernels::quantize_groupwise(dense, QuantScheme::Int4, 128, "test"),
                                kernels::quantize_groupwise(dense, QuantScheme::Int2, 32, "test")};
  for (const QuantizedWeight& w : ws) {
    Tensor wt = Tensor::empty({w.out_features, w.in_features});
    kernels::dequantize_rows(w, 0, w.out_features, wt);
    const std::vector<double> wd = values(wt);
    // The decode written here agrees with the library's to the last f32 bit's rounding.
    std::vector<double> wm;
    const std::vector<double> mine = decode(w, &wm);
    for (size_t i = 0; i < wd.size(); ++i) ASSERT_NEAR(mine[i], wd[i], 1e-7 * std::fabs(wd[i]) + 1e-30) << i;
    for (int64_t rows : {1, 4, 12}) {
      const Tensor x = random_tensor({rows, w.in_features}, 60 + rows);
      Tensor y = Tensor::empty({rows, w.out_features});
      kernels::quant_matmul(x, w, y);
      EXPECT_EQ(violations(y, reference(wd, wm, w.out_features, w.in_features, x, true, nullptr)), "")
          << kernels::quant_scheme_name(w.scheme) << " rows=" << rows;
      const Tensor dy = random_tensor({rows, w.out_features}, 70 + rows);
      Tensor dx = Tensor::empty({rows, w.in_features});
      kernels::quant_matmul_input_grad(dy, w, dx);
      EXPECT_EQ(violations(dx, reference(wd, wm, w.out_features, w.in_features, dy, false, nullptr)), "")
          << kernels::quant_scheme_name(w.scheme) << " rows=" << rows;
    }
  }
}

// 3-D activations and row-strided views (column slices of wider buffers) in and out.
TEST(QuantMatmul, BatchedAndStridedOperands) {
  const QuantizedWeight w = random_weight(Kind::Int4, 19, 64, 32, 77);
  std::vector<double> wm;
  const std::vector<double> wd = decode(w, &wm);
  for (int64_t rows_per_batch : {1, 3, 7}) {
    const Tensor x = random_tensor({2, rows_per_batch, 64}, 80 + rows_per_batch);
    Tensor y = Tensor::empty({2, rows_per_batch, 19});
    kernels::quant_matmul(x, w, y);
    EXPECT_EQ(violations(y, reference(wd, wm, 19, 64, x, true, nullptr)), "") << rows_per_batch;

    const int64_t rows = 2 * rows_per_batch;
    Tensor wide_x = random_tensor({rows, 80}, 85 + rows_per_batch), wide_y = Tensor::zeros({rows, 30});
    const Tensor xs = wide_x.slice(1, 8, 72);
    Tensor ys = wide_y.slice(1, 5, 24);
    kernels::quant_matmul(xs, w, ys);
    EXPECT_EQ(violations(ys, reference(wd, wm, 19, 64, xs, true, nullptr)), "") << rows_per_batch;
    for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(wide_y.item_at({r, 29}), 0.0) << "wrote outside the view";

    Tensor wide_dx = Tensor::zeros({rows, 70});
    Tensor dxs = wide_dx.slice(1, 3, 67);
    const Tensor dys = wide_x.slice(1, 1, 20);
    kernels::quant_matmul_input_grad(dys, w, dxs);
    EXPECT_EQ(violations(dxs, reference(wd, wm, 19, 64, dys, false, nullptr)), "") << rows_per_batch;
    for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(wide_dx.item_at({r, 2}) + wide_dx.item_at({r, 67}), 0.0);
  }
}

TEST(QuantMatmul, BadInputIsOneClearError) {
  const QuantizedWeight w = random_weight(Kind::NF4, 16, 128, 64, 3);
  Tensor y = Tensor::empty({2, 16}), dx = Tensor::empty({2, 128});
  expect_error_containing([&] { kernels::quant_matmul(Tensor::empty({2, 100}), w, y); },
                          {"quant_matmul", "x", "128 features", "[16, 128]"});
  expect_error_containing([&] { Tensor y3 = Tensor::empty({3, 16}); kernels::quant_matmul(Tensor::empty({2, 128}), w, y3); },
                          {"quant_matmul", "y", "2 rows of 16"});
  expect_error_containing([&] { kernels::quant_matmul(Tensor::empty({2, 128}, DType::BF16), w, y); },
                          {"quant_matmul", "x", "f32"});
  expect_error_containing([&] { kernels::quant_matmul_input_grad(Tensor::empty({2, 15}), w, dx); },
                          {"quant_matmul_input_grad", "dy", "16 features"});
  expect_error_containing(
      [&] { Tensor dxc = fake_cuda_tensor({2, 128}); kernels::quant_matmul_input_grad(Tensor::empty({2, 16}), w, dxc); },
      {"quant_matmul_input_grad", "dx", cuda_operand_on_cpu_error()});
  // The product written over its own input.
  Tensor buf = Tensor::empty({2, 128});
  expect_error_containing([&] { Tensor alias = buf.slice(1, 0, 16); kernels::quant_matmul(buf, w, alias); },
                          {"quant_matmul", "overlaps"});
  // A weight whose packed codes do not match its shape.
  QuantizedWeight short_codes = w;
  short_codes.packed = w.packed.slice(0, 0, 100);
  expect_error_containing([&] { kernels::quant_matmul(Tensor::empty({2, 128}), short_codes, y); },
                          {"quant_matmul: w", "packed"});
}
