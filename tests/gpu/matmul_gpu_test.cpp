// kernels/matmul on CUDA (cuBLASLt) against the CPU backend on the same operands: every
// transpose combination, batched and broadcast 3-D products (each of the call shapes
// kernels/cuda/matmul.cpp's gemm_calls makes: one call, one tall call for a batched a with a
// shared b, one strided-batched call, one call per batch), row-strided views into wider
// buffers, alpha/beta (beta = 0 ignoring NaN in c), K = 0, in f32 and with bf16 operands
// writing bf16 or f32, and f32 operands writing bf16. Then the fused bias / GELU epilogues of
// kernels/cuda/gemm.h against the CPU's matmul + add_bias + gelu_forward, both where cuBLASLt
// fuses them and where the wrapper falls back to a separate pass. Tolerances and the error
// measure: tests/support/gpu_check.h.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ostream>

#include "kernels/activation.h"
#include "kernels/cuda/gemm.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

struct MatmulCase {
  const char* name;
  int64_t batch_a, batch_b;  // 0: 2-D operands; 1 against n > 1 broadcasts that operand
  int64_t M, N, K;
  bool trans_a, trans_b;
  float alpha, beta;
  int64_t pad;  // extra columns in each operand's backing buffer (row stride = cols + pad)
  DType ab, c;  // operand and output dtypes
};

std::ostream& operator<<(std::ostream& os, const MatmulCase& c) { return os << c.name; }

// A [rows, cols] operand (with a leading batch dim when batch > 0) whose row stride is
// cols + pad: a view of the first cols columns of a wider buffer, as q/k/v slices are.
Tensor strided_operand(const Tensor& wide, int64_t cols) { return wide.slice(wide.dim() - 1, 0, cols); }

Shape shape_of(int64_t batch, int64_t rows, int64_t cols) {
  return batch > 0 ? Shape{batch, rows, cols} : Shape{rows, cols};
}

class MatmulGpu : public ::testing::TestWithParam<MatmulCase> {};

TEST_P(MatmulGpu, MatchesCpu) {
  const MatmulCase& t = GetParam();
  const int64_t batch_c = std::max(t.batch_a, t.batch_b);
  const Shape a_shape = t.trans_a ? shape_of(t.batch_a, t.K, t.M + t.pad) : shape_of(t.batch_a, t.M, t.K + t.pad);
  const Shape b_shape = t.trans_b ? shape_of(t.batch_b, t.N, t.K + t.pad) : shape_of(t.batch_b, t.K, t.N + t.pad);
  const Shape c_shape = shape_of(batch_c, t.M, t.N + t.pad);
  const int64_t a_cols = t.trans_a ? t.M : t.K, b_cols = t.trans_b ? t.K : t.N;

  const Tensor a_wide = reference_input(random_tensor(a_shape, 11), t.ab);
  const Tensor b_wide = reference_input(random_tensor(b_shape, 12), t.ab);
  Tensor c_wide = reference_input(random_tensor(c_shape, 13), t.c);
  if (t.beta == 0.0f) c_wide.fill_(std::numeric_limits<double>::quiet_NaN());  // must be ignored

  Tensor c_cpu = c_wide.clone();
  Tensor c_cpu_view = strided_operand(c_cpu, t.N);
  kernels::matmul(strided_operand(a_wide, a_cols), t.trans_a, strided_operand(b_wide, b_cols), t.trans_b, c_cpu_view,
                  t.alpha, t.beta);

  const Tensor a_gpu = gpu_operand(a_wide, t.ab), b_gpu = gpu_operand(b_wide, t.ab);
  Tensor c_gpu = gpu_operand(c_wide, t.c);
  Tensor c_gpu_view = strided_operand(c_gpu, t.N);
  kernels::matmul(strided_operand(a_gpu, a_cols), t.trans_a, strided_operand(b_gpu, b_cols), t.trans_b, c_gpu_view,
                  t.alpha, t.beta);

  // bf16 operands are exact in f32 and their products too, so an f32 output differs only by
  // summation order (kF32Tol); a bf16 output adds its own rounding.
  const double tol = t.c == DType::BF16 ? kBf16Rounding + kF32Tol : kF32Tol;
  EXPECT_GPU_NEAR(c_gpu_view, c_cpu_view, tol, "c");
  if (t.pad > 0) {  // the padding columns of c are outside the view and must be untouched
    const Tensor pad_gpu = c_gpu.slice(c_gpu.dim() - 1, t.N, t.N + t.pad);
    const Tensor pad_want = c_wide.slice(c_wide.dim() - 1, t.N, t.N + t.pad);
    const std::vector<float> got = host_f32(pad_gpu).to_vector(), want = pad_want.to_vector();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i)
      if (!(std::isnan(got[i]) && std::isnan(want[i]))) ASSERT_EQ(got[i], want[i]) << "padding column written at " << i;
  }
}

constexpr DType F32 = DType::F32, BF16 = DType::BF16;

const MatmulCase kCases[] = {
    // name                      ba bb   M    N    K   ta     tb     alpha beta pad ab    c
    {"f32_nn_odd",                0, 0,  67,  83, 129, false, false, 1.0f, 0.0f, 0, F32, F32},
    {"f32_nt",                    0, 0,  64,  96, 128, false, true,  1.0f, 0.0f, 0, F32, F32},
    {"f32_tn",                    0, 0,  48,  40,  72, true,  false, 1.0f, 0.0f, 0, F32, F32},
    {"f32_tt_odd",                0, 0,  33,  17,  45, true,  true,  1.0f, 0.0f, 0, F32, F32},
    {"f32_alpha_beta",            0, 0,  64,  64,  64, false, true,  0.5f, 1.5f, 0, F32, F32},
    {"f32_beta0_ignores_nan",     0, 0,  32,  48,  40, false, false, 1.0f, 0.0f, 0, F32, F32},
    {"f32_single_row",            0, 0,   1, 200, 300, false, true,  1.0f, 0.0f, 0, F32, F32},
    {"f32_strided_rows",          0, 0,  40,  56,  64, false, true,  1.0f, 1.0f, 8, F32, F32},
    {"f32_batched",               3, 3,  24,  40,  32, false, false, 1.0f, 0.0f, 0, F32, F32},
    {"f32_broadcast_a",           1, 4,  16,  24,  20, false, true,  1.0f, 0.0f, 0, F32, F32},
    {"f32_broadcast_b",           5, 1,  16,  24,  20, true,  false, 2.0f, 0.5f, 0, F32, F32},
    {"f32_batched_strided",       2, 2,  20,  28,  36, true,  true,  1.0f, 0.0f, 4, F32, F32},
    {"f32_large",                 0, 0, 256, 512, 384, false, true,  1.0f, 0.0f, 0, F32, F32},
    {"bf16_nn",                   0, 0,  64, 128,  96, false, false, 1.0f, 0.0f, 0, BF16, BF16},
    {"bf16_nt_f32_out",           0, 0,  64, 128,  96, false, true,  1.0f, 0.0f, 0, BF16, F32},
    {"bf16_tn_f32_out_accumulate",0, 0,  72,  56, 104, true,  false, 1.0f, 1.0f, 0, BF16, F32},
    {"bf16_tt_odd",               0, 0,  31,  45,  27, true,  true,  1.0f, 0.0f, 0, BF16, BF16},
    {"bf16_alpha_beta",           0, 0,  64,  64, 128, false, true,  0.25f, 2.0f, 0, BF16, BF16},
    {"bf16_strided_rows",         0, 0,  48,  64,  64, false, true,  1.0f, 0.0f, 8, BF16, BF16},
    {"bf16_batched_broadcast",    1, 3,  32,  48,  64, false, true,  1.0f, 0.0f, 0, BF16, BF16},
    {"bf16_batched_strided",      4, 4,  16,  32,  48, false, false, 1.0f, 0.0f, 16, BF16, F32},
    {"bf16_large",                0, 0, 512, 768, 1024, false, true, 1.0f, 0.0f, 0, BF16, BF16},
    // a batched untransposed a against a 2-D b: one tall [batch * M, K] product
    {"f32_batched_a_shared_b",    3, 0,  24,  40,  32, false, true,  1.0f, 0.0f, 0, F32, F32},
    {"bf16_batched_a_shared_b_strided", 2, 0, 16, 48, 64, false, false, 1.0f, 0.5f, 8, BF16, BF16},
    // f32 operands into bf16 c (through an f32 temporary), and an empty inner dimension
    {"f32_operands_bf16_out",     0, 0,  40,  48,  56, false, false, 1.0f, 0.5f, 0, F32, BF16},
    {"f32_empty_inner_dim",       0, 0,   8,  12,   0, false, false, 1.0f, 0.5f, 0, F32, F32},
};

INSTANTIATE_TEST_SUITE_P(Cases, MatmulGpu, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<MatmulCase>& i) { return std::string(i.param.name); });

// The allocating form returns a CUDA tensor of the operands' dtype on their device.
TEST(MatmulGpuAllocating, ReturnsProductOnTheOperandsDevice) {
  const Tensor a = random_tensor({37, 50}, 21), b = random_tensor({50, 29}, 22);
  const Tensor want = kernels::matmul(a, false, b, false);
  const Tensor got = kernels::matmul(on_gpu(a), false, on_gpu(b), false);
  EXPECT_TRUE(got.device() == gpu()) << got.describe();
  EXPECT_EQ(got.shape(), want.shape());
  EXPECT_GPU_NEAR(got, want, kF32Tol, "allocating matmul");
}

// ---- matmul_bias / matmul_bias_gelu (kernels/cuda/gemm.h) ----------------------------------

struct BiasCase {
  const char* name;
  int64_t batch_a, batch_b;  // as MatmulCase (no padding: contiguous operands)
  int64_t M, N, K;
  bool trans_a, trans_b;
  DType ab, c, bias;
  int gelu;  // 0: matmul_bias; 1: matmul_bias with gelu; 2: matmul_bias_gelu (pre_gelu written too)
};

std::ostream& operator<<(std::ostream& os, const BiasCase& c) { return os << c.name; }

class MatmulBiasGpu : public ::testing::TestWithParam<BiasCase> {};

TEST_P(MatmulBiasGpu, MatchesCpuProductBiasGelu) {
  const BiasCase& t = GetParam();
  const int64_t batch_c = std::max(t.batch_a, t.batch_b);
  const Tensor a = reference_input(
      random_tensor(t.trans_a ? shape_of(t.batch_a, t.K, t.M) : shape_of(t.batch_a, t.M, t.K), 41), t.ab);
  const Tensor b = reference_input(
      random_tensor(t.trans_b ? shape_of(t.batch_b, t.N, t.K) : shape_of(t.batch_b, t.K, t.N), 42), t.ab);
  const Tensor bias = reference_input(random_tensor({t.N}, 43), t.bias);
  const Shape c_shape = shape_of(batch_c, t.M, t.N);

  Tensor pre_cpu = Tensor::empty(c_shape);
  kernels::matmul(a, t.trans_a, b, t.trans_b, pre_cpu);
  kernels::add_bias(pre_cpu, bias);
  Tensor c_cpu = pre_cpu.clone();
  if (t.gelu > 0) kernels::gelu_forward(pre_cpu, c_cpu);

  Tensor c_gpu = Tensor::empty(c_shape, t.c, gpu()), pre_gpu;
  c_gpu.fill_(std::numeric_limits<double>::quiet_NaN());  // c is assigned: the old contents must not leak in
  if (t.gelu == 2) {
    pre_gpu = Tensor::empty(c_shape, t.c, gpu());
    pre_gpu.fill_(std::numeric_limits<double>::quiet_NaN());
    kernels::cuda::matmul_bias_gelu(gpu_operand(a, t.ab), t.trans_a, gpu_operand(b, t.ab), t.trans_b,
                                    gpu_operand(bias, t.bias), c_gpu, pre_gpu);
  } else {
    kernels::cuda::matmul_bias(gpu_operand(a, t.ab), t.trans_a, gpu_operand(b, t.ab), t.trans_b,
                               gpu_operand(bias, t.bias), c_gpu, t.gelu == 1);
  }
  // bf16 c: the product (and, unfused, the biased value) is rounded before GELU, the result
  // once more. f32 GELU: cuBLASLt's epilogue may evaluate tanh with the hardware approximation
  // (about 2^-11 relative), far inside 1e-3 yet far below a wrong bias index or activation.
  const bool bf16 = t.c == DType::BF16;
  const double pre_tol = bf16 ? 2 * kBf16Rounding : kF32Tol;
  const double c_tol = bf16 ? 3 * kBf16Rounding : (t.gelu > 0 ? 1e-3 : kF32Tol);
  EXPECT_GPU_NEAR(c_gpu, c_cpu, c_tol, "c");
  if (t.gelu == 2) EXPECT_GPU_NEAR(pre_gpu, pre_cpu, pre_tol, "pre_gelu");
}

const BiasCase kBiasCases[] = {
    // name                             ba bb   M   N   K   ta     tb     ab    c     bias gelu
    // fused where cuBLASLt takes it: BIAS, GELU_AUX_BIAS, strided-batched GELU_BIAS, and per-batch
    // calls (a broadcast a) each with its own pre_gelu pointer
    {"f32_bias",                         0, 0, 64, 96, 80, false, true,  F32,  F32,  F32,  0},
    {"f32_bias_gelu_pre",                0, 0, 48, 64, 40, false, false, F32,  F32,  F32,  2},
    {"bf16_bias_gelu_batched",           3, 3, 32, 64, 48, false, true,  BF16, BF16, BF16, 1},
    {"bf16_to_f32_broadcast_a_pre",      1, 3, 16, 40, 24, false, false, BF16, F32,  F32,  2},
    // the separate epilogue pass: bias dtype unlike c's, pre_gelu rows not a multiple of 8
    // (here with a tall batched-a call), f32 operands into bf16 c
    {"bf16_f32_bias_unfused_pre",        0, 0, 40, 56, 64, true,  false, BF16, BF16, F32,  2},
    {"f32_pre_odd_cols_batched_a",       2, 0, 24, 37, 32, false, true,  F32,  F32,  F32,  2},
    {"f32_to_bf16_bias_gelu",            0, 0, 32, 48, 40, false, false, F32,  BF16, BF16, 1},
};

INSTANTIATE_TEST_SUITE_P(Cases, MatmulBiasGpu, ::testing::ValuesIn(kBiasCases),
                         [](const ::testing::TestParamInfo<BiasCase>& i) { return std::string(i.param.name); });

// Linear's fused product: c = x @ w^T + bias through the cuBLASLt bias epilogue, against the CPU's
// matmul + add_bias. bf16: both operands and the bias rounded first; one output rounding plus
// the f32 accumulation difference: 2 * 2^-8.
TEST(MatmulBiasEntryGpu, LinearsFusedProductMatchesCpu) {
  for (DType dt : {DType::F32, DType::BF16}) {
    const Tensor x = reference_input(random_tensor({67, 96}, 31), dt);
    const Tensor w = reference_input(random_tensor({40, 96}, 32), dt);
    const Tensor bias = reference_input(random_tensor({40}, 33), dt);
    Tensor want = Tensor::empty({67, 40});
    kernels::matmul_bias(x, false, w, true, bias, want);
    Tensor got = Tensor::empty({67, 40}, dt, gpu());
    got.fill_(std::numeric_limits<double>::quiet_NaN());  // assigned, never read
    kernels::matmul_bias(gpu_operand(x, dt), false, gpu_operand(w, dt), true, gpu_operand(bias, dt), got);
    EXPECT_GPU_NEAR(got, want, dt == DType::F32 ? kF32Tol : 2 * kBf16Rounding, std::string("matmul_bias ") + dtype_label(dt));
  }
}

}  // namespace
