// kernels/matmul on CUDA (cuBLASLt) against the CPU backend on the same operands: every
// transpose combination, batched and broadcast 3-D products, row-strided views into wider
// buffers, alpha/beta (beta = 0 ignoring NaN in c), in f32 and with bf16 operands writing
// bf16 or f32. Tolerances and the error measure: tests/support/gpu_check.h.
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

// Linear's fused product: c = x @ w^T + bias through the cuBLASLt bias epilogue, against the CPU's
// matmul + add_bias. bf16: both operands and the bias rounded first; one output rounding plus
// the f32 accumulation difference: 2 * 2^-8.
TEST(MatmulBiasGpu, BiasEpilogueMatchesCpu) {
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

// The GELU epilogue (tanh approximation) and its saved pre-activation, against matmul +
// add_bias + gelu_forward on the CPU. f32 only: the product and bias are exact-f32 paths, GELU
// adds a few ulps (1e-5 holds).
TEST(MatmulBiasGpu, GeluEpilogueAndPreActivationMatchCpu) {
  const Tensor x = random_tensor({33, 64}, 41), w = random_tensor({48, 64}, 42), bias = random_tensor({48}, 43);
  Tensor pre_want = Tensor::empty({33, 48}), act_want = Tensor::empty({33, 48});
  kernels::matmul_bias(x, false, w, true, bias, pre_want);
  kernels::gelu_forward(pre_want, act_want);
  Tensor act = Tensor::empty({33, 48}, DType::F32, gpu()), pre = Tensor::empty({33, 48}, DType::F32, gpu());
  kernels::cuda::matmul_bias_gelu(on_gpu(x), false, on_gpu(w), true, on_gpu(bias), act, pre);
  EXPECT_GPU_NEAR(pre, pre_want, kF32Tol, "matmul_bias_gelu pre-activation");
  EXPECT_GPU_NEAR(act, act_want, kF32Tol, "matmul_bias_gelu activation");
  Tensor act_only = Tensor::empty({33, 48}, DType::F32, gpu());
  kernels::cuda::matmul_bias(on_gpu(x), false, on_gpu(w), true, on_gpu(bias), act_only, /*gelu=*/true);
  EXPECT_GPU_NEAR(act_only, act_want, kF32Tol, "matmul_bias with gelu");
}

}  // namespace
