// kernels/quant.h on CUDA (kernels/cuda/quant.cu) against the CPU reference: every scheme (nf4,
// nf4 with double quantization, int4, int2) quantized on the CPU, dequantized on the CPU
// (kernels::dequantize_rows) and multiplied by naive double-precision loops, so the reference
// shares no code with the CUDA kernels. Each case runs y = x·Ŵᵀ and dx = dy·Ŵ with f32 or bf16
// activations, accumulate on or off (off: the output starts as NaN, which must be overwritten),
// on shapes that take each kernel variant: 16-byte code loads (in a multiple of 32 for 4-bit, 64
// for 2-bit) and the 8-element fallback, chunks that cross group boundaries (block < 32), several
// double-quant scale blocks, 1..16 rows (the GEMV kernels, in passes of 4 rows; dx split over
// output-row slices) and more rows (dequantized tiles + cuBLASLt, one case with several tiles
// each way). Then dequantize_rows into f32 and bf16, strided views, determinism and bad input.
//
// Tolerances (max-norm relative error, tests/support/gpu_check.h): Ŵ is the same f32 value on both
// sides (the same formula; double quantization's absmax may differ by an ulp where the CPU fuses
// DYN·scale + offset into one FMA), so f32 products differ by summation order only: kF32Tol. bf16
// activations are bf16-exact in the reference; a bf16 output adds its rounding (kBf16Rounding),
// and the many-row path, which hands cuBLASLt a bf16 tile of Ŵ, one more rounding of each weight
// (kBf16Rounding).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/cuda/ops.h"
#include "kernels/quant.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;
using kernels::QuantizedWeight;
using kernels::QuantScheme;

namespace {

constexpr DType F32 = DType::F32, BF16 = DType::BF16;
constexpr QuantScheme NF4 = QuantScheme::NF4, INT4 = QuantScheme::Int4, INT2 = QuantScheme::Int2;
// Activation rows above this take the tiled cuBLASLt path (kGemvMaxRows in kernels/cuda/quant.cu).
constexpr int64_t kGemvMaxRows = 16;
// dequantize_rows in f32: the CPU's own values, except double quantization's absmax (an ulp).
constexpr double kDequantDqTol = 1e-6;

struct QuantCase {
  const char* name;
  QuantScheme scheme;
  bool double_quant;
  int64_t block;
  int64_t out, in, rows;
  DType dt;
  bool accumulate;
};

std::ostream& operator<<(std::ostream& os, const QuantCase& c) { return os << c.name; }

// W [out, in] with rows of different magnitudes (so absmaxes and scales vary over the matrix).
Tensor weight(int64_t out, int64_t in, uint32_t seed) {
  Tensor w = random_tensor({out, in}, seed);
  float* p = w.data<float>();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) p[o * in + i] *= 0.25f * static_cast<float>(1 + o % 7);
  return w;
}

QuantizedWeight quantize(QuantScheme scheme, bool double_quant, int64_t block, const Tensor& w) {
  return scheme == NF4 ? kernels::quantize_nf4(w, double_quant, block, "test weight")
                       : kernels::quantize_groupwise(w, scheme, block, "test weight");
}

// The same weight with every tensor copied to the GPU.
QuantizedWeight on_gpu(const QuantizedWeight& q) {
  QuantizedWeight g = q;
  for (Tensor* t : {&g.packed, &g.absmax, &g.absmax_codes, &g.absmax_scales, &g.scales, &g.zeros})
    if (t->defined()) *t = t->to(gpu());
  return g;
}

// Ŵ [out, in] in f32 by the CPU reference decode.
Tensor dequantized(const QuantizedWeight& q) {
  Tensor w = Tensor::empty({q.out_features, q.in_features});
  kernels::dequantize_rows(q, 0, q.out_features, w);
  return w;
}

// y[r, o] = start[r, o] (if given) + sum_i x[r, i]·wd[o, i], in double.
Tensor naive_product(const Tensor& x, const Tensor& wd, const Tensor* start) {
  const int64_t rows = x.size(0), in = x.size(1), out = wd.size(0);
  const std::vector<float> xv = x.to_vector(), wv = wd.to_vector();
  std::vector<float> y(static_cast<size_t>(rows * out));
  const std::vector<float> y0 = start ? start->to_vector() : std::vector<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double acc = start ? y0[r * out + o] : 0.0;
      for (int64_t i = 0; i < in; ++i) acc += static_cast<double>(xv[r * in + i]) * wv[o * in + i];
      y[r * out + o] = static_cast<float>(acc);
    }
  return Tensor::from_vector(y, {rows, out});
}

// dx[r, i] = start[r, i] (if given) + sum_o dy[r, o]·wd[o, i], in double.
Tensor naive_input_grad(const Tensor& dy, const Tensor& wd, const Tensor* start) {
  const int64_t rows = dy.size(0), out = dy.size(1), in = wd.size(1);
  const std::vector<float> dyv = dy.to_vector(), wv = wd.to_vector();
  std::vector<double> acc(static_cast<size_t>(rows * in), 0.0);
  if (start) {
    const std::vector<float> s = start->to_vector();
    for (size_t k = 0; k < acc.size(); ++k) acc[k] = s[k];
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      const double d = dyv[r * out + o];
      for (int64_t i = 0; i < in; ++i) acc[r * in + i] += d * wv[o * in + i];
    }
  return Tensor::from_vector(std::vector<float>(acc.begin(), acc.end()), {rows, in});
}

double product_tolerance(DType dt, int64_t rows) {
  if (dt == F32) return kF32Tol;
  return kF32Tol + kBf16Rounding + (rows > kGemvMaxRows ? kBf16Rounding : 0.0);
}

// The output a call writes into: `start` on the GPU when accumulating, else NaN everywhere.
Tensor gpu_output(const Tensor& start, DType dt, bool accumulate) {
  Tensor t = start.clone();
  if (!accumulate) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return gpu_operand(t, dt);
}

class QuantGpu : public ::testing::TestWithParam<QuantCase> {};

TEST_P(QuantGpu, ProductsMatchCpuReference) {
  const QuantCase& c = GetParam();
  const QuantizedWeight q = quantize(c.scheme, c.double_quant, c.block, weight(c.out, c.in, 31));
  const QuantizedWeight qg = on_gpu(q);
  const Tensor wd = dequantized(q);
  const double tol = product_tolerance(c.dt, c.rows);

  const Tensor x = reference_input(random_tensor({c.rows, c.in}, 32), c.dt);
  const Tensor y0 = reference_input(random_tensor({c.rows, c.out}, 33), c.dt);
  const Tensor y_want = naive_product(x, wd, c.accumulate ? &y0 : nullptr);
  Tensor y = gpu_output(y0, c.dt, c.accumulate);
  kernels::cuda::quant_matmul(gpu_operand(x, c.dt), qg, y, c.accumulate);
  EXPECT_GPU_NEAR(y, y_want, tol, std::string("y = x·Ŵᵀ (") + dtype_label(c.dt) + ")");

  const Tensor dy = reference_input(random_tensor({c.rows, c.out}, 34), c.dt);
  const Tensor dx0 = reference_input(random_tensor({c.rows, c.in}, 35), c.dt);
  const Tensor dx_want = naive_input_grad(dy, wd, c.accumulate ? &dx0 : nullptr);
  Tensor dx = gpu_output(dx0, c.dt, c.accumulate);
  kernels::cuda::quant_matmul_input_grad(gpu_operand(dy, c.dt), qg, dx, c.accumulate);
  EXPECT_GPU_NEAR(dx, dx_want, tol, std::string("dx = dy·Ŵ (") + dtype_label(c.dt) + ")");
}

TEST_P(QuantGpu, DequantizeRowsMatchesCpu) {
  const QuantCase& c = GetParam();
  const QuantizedWeight q = quantize(c.scheme, c.double_quant, c.block, weight(c.out, c.in, 36));
  const QuantizedWeight qg = on_gpu(q);
  const Tensor wd = dequantized(q);
  Tensor all = Tensor::empty({c.out, c.in}, F32, gpu());
  kernels::cuda::dequantize_rows(qg, 0, c.out, all);
  const double err = gpu_error(all, wd);
  if (c.double_quant) EXPECT_LT(err, kDequantDqTol) << "f32 Ŵ";
  else EXPECT_EQ(err, 0.0) << "f32 Ŵ: the same f32 formula on both sides";

  // A middle range of rows in bf16: the f32 values rounded once.
  const int64_t r0 = c.out / 3, r1 = c.out - c.out / 4;
  Tensor part = Tensor::empty({r1 - r0, c.in}, BF16, gpu());
  kernels::cuda::dequantize_rows(qg, r0, r1, part);
  EXPECT_GPU_NEAR(part, wd.slice(0, r0, r1), kBf16Rounding, "bf16 Ŵ rows [r0, r1)");
}

// name                        scheme dq     block out   in    rows dtype accumulate
const QuantCase kCases[] = {
    // Few rows: the GEMV kernels.
    {"nf4_row_bf16",             NF4,  false,  64,   37,  192,  1, BF16, false},
    {"nf4_dq_f32_acc",           NF4,  true,   64,  300,  256,  3, F32,  true},   // 1200 absmaxes: 5 scale blocks
    {"nf4_dq_block16_bf16_acc",  NF4,  true,   16,   70,   64,  5, BF16, true},   // 32-element chunks span 2 blocks
    {"nf4_odd_in_f32",           NF4,  false,   8,   23,   40,  2, F32,  false},  // 8-element loads
    {"int4_bf16",                INT4, false,  32,   45,   96,  5, BF16, false},
    {"int4_odd_in_f32_acc",      INT4, false,   8,   33,   40,  2, F32,  true},
    {"int4_decode_shape",        INT4, false, 128, 1024, 4096,  1, BF16, false},  // many lanes' loops, dx slices
    {"int2_row_f32",             INT2, false,  64,   29,  128,  1, F32,  false},
    {"int2_group16_bf16_acc",    INT2, false,  16,   31,   48,  4, BF16, true},   // 8-element loads
    {"int2_cross_groups_16rows", INT2, false,  16,   20,  128, 16, F32,  false},  // 64-element chunks span 4 groups
    // Many rows: dequantized tiles + cuBLASLt.
    {"nf4_many_rows_bf16",       NF4,  false,  64,  130,  256, 40, BF16, false},
    {"nf4_dq_many_rows_f32_acc", NF4,  true,   64,   77,  192, 17, F32,  true},
    {"int4_many_rows_bf16_acc",  INT4, false, 128,   96,  384, 33, BF16, true},
    {"int2_many_rows_f32",       INT2, false,  32,   65,  160, 24, F32,  false},
    // 4.5M weights: two row tiles for y and two column tiles for dx (tiles of 2^22 elements).
    {"int4_tiles_bf16",          INT4, false, 128, 1100, 4096, 20, BF16, false},
    {"nf4_dq_tiles_f32_acc",     NF4,  true,   64, 1100, 4096, 20, F32,  true},
};

INSTANTIATE_TEST_SUITE_P(Cases, QuantGpu, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<QuantCase>& i) { return std::string(i.param.name); });

// x, y, dy, dx as column slices of wider buffers (row strides that break 16-byte alignment, so
// the GEMV reads x through an aligned copy) and dequantize_rows into a strided bf16 view.
TEST(QuantGpuViews, StridedOperands) {
  const QuantizedWeight q = quantize(INT4, false, 32, weight(40, 96, 41));
  const QuantizedWeight qg = on_gpu(q);
  const Tensor wd = dequantized(q);
  for (DType dt : {F32, BF16}) {
    for (int64_t rows : {int64_t{3}, int64_t{21}}) {
      SCOPED_TRACE(std::string(dtype_label(dt)) + ", rows " + std::to_string(rows));
      const Tensor x_wide = reference_input(random_tensor({rows, 96 + 3}, 42), dt);
      const Tensor x = x_wide.slice(1, 0, 96);
      const Tensor y_start = reference_input(random_tensor({rows, 40 + 5}, 43), dt);
      Tensor y_wide = gpu_operand(y_start, dt);
      Tensor y = y_wide.slice(1, 0, 40);
      kernels::cuda::quant_matmul(gpu_operand(x_wide, dt).slice(1, 0, 96), qg, y, false);
      EXPECT_GPU_NEAR(y, naive_product(x.contiguous(), wd, nullptr), product_tolerance(dt, rows), "strided y");

      const Tensor dy_wide = reference_input(random_tensor({rows, 40 + 7}, 44), dt);
      const Tensor dx_start = reference_input(random_tensor({rows, 96 + 8}, 45), dt);
      Tensor dx_wide = gpu_operand(dx_start, dt);
      Tensor dx = dx_wide.slice(1, 0, 96);
      kernels::cuda::quant_matmul_input_grad(gpu_operand(dy_wide, dt).slice(1, 0, 40), qg, dx, false);
      EXPECT_GPU_NEAR(dx, naive_input_grad(dy_wide.slice(1, 0, 40).contiguous(), wd, nullptr),
                      product_tolerance(dt, rows), "strided dx");
      // The padding columns are outside the views and keep their values.
      EXPECT_EQ(gpu_error(y_wide.slice(1, 40, 45), y_start.slice(1, 40, 45)), 0.0) << "y padding written";
      EXPECT_EQ(gpu_error(dx_wide.slice(1, 96, 104), dx_start.slice(1, 96, 104)), 0.0) << "dx padding written";
    }
  }
  Tensor wide = Tensor::zeros({10, 96 + 1}, BF16, gpu());
  Tensor rows = wide.slice(1, 0, 96);
  kernels::cuda::dequantize_rows(qg, 5, 15, rows);
  EXPECT_GPU_NEAR(rows, wd.slice(0, 5, 15), kBf16Rounding, "dequantize_rows into a strided bf16 view");
}

// No atomics: a second run of the split-K input gradient is bitwise equal.
TEST(QuantGpuDeterminism, InputGradIsReproducible) {
  const QuantizedWeight qg = on_gpu(quantize(NF4, true, 64, weight(2048, 512, 51)));
  const Tensor dy = gpu_operand(random_tensor({3, 2048}, 52), BF16);
  Tensor a = Tensor::empty({3, 512}, BF16, gpu()), b = Tensor::empty({3, 512}, BF16, gpu());
  kernels::cuda::quant_matmul_input_grad(dy, qg, a, false);
  kernels::cuda::quant_matmul_input_grad(dy, qg, b, false);
  EXPECT_EQ(host_f32(a).to_vector(), host_f32(b).to_vector());
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  const std::string msg = error_of(f);
  for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

TEST(QuantGpuErrors, BadInputNamesTheProblem) {
  const QuantizedWeight q = quantize(INT2, false, 32, weight(16, 64, 61));
  const QuantizedWeight qg = on_gpu(q);
  const Tensor x = Tensor::zeros({2, 64}, F32, gpu());
  Tensor y = Tensor::zeros({2, 16}, F32, gpu());
  Tensor narrow_x = Tensor::zeros({2, 48}, F32, gpu());
  expect_error([&] { kernels::cuda::quant_matmul(narrow_x, qg, y, false); }, {"quant_matmul", "x", "64"});
  Tensor wrong_y = Tensor::zeros({3, 16}, F32, gpu());
  expect_error([&] { kernels::cuda::quant_matmul(x, qg, wrong_y, false); }, {"quant_matmul", "y", "[2, 16]"});
  Tensor bf16_y = Tensor::zeros({2, 16}, BF16, gpu());
  expect_error([&] { kernels::cuda::quant_matmul(x, qg, bf16_y, false); }, {"quant_matmul", "y", "f32"});
  expect_error([&] { kernels::cuda::quant_matmul(x, q, y, false); }, {"quant_matmul", "w.packed", "cuda"});
  Tensor dx = Tensor::zeros({2, 64}, F32, gpu());
  expect_error([&] { kernels::cuda::quant_matmul_input_grad(x, qg, dx, false); },
               {"quant_matmul_input_grad", "dy", "16"});
  QuantizedWeight truncated = qg;
  truncated.packed = qg.packed.slice(0, 0, qg.packed.numel() - 1);
  expect_error([&] { kernels::cuda::quant_matmul(x, truncated, y, false); }, {"quant_matmul", "packed"});
  Tensor out = Tensor::zeros({4, 64}, F32, gpu());
  expect_error([&] { kernels::cuda::dequantize_rows(qg, 14, 18, out); }, {"dequantize_rows", "rows [14, 18)"});
  expect_error([&] { kernels::cuda::dequantize_rows(qg, 0, 3, out); }, {"dequantize_rows", "out", "[3, 64]"});
}

}  // namespace
