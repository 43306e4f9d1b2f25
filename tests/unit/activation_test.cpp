// kernels/activation: GELU (tanh approximation) and SwiGLU forward/backward
// against the formulas evaluated in double and against central finite
// differences, with aliasing, strided views and sizes that take the OpenMP path.
//
// Tolerances: each output is a handful of f32 ops plus tanhf/expf (<= 2 ulp), so
// elementwise relative error is ~1e-6; compared relative to max|reference| at
// 1e-5. Finite differences (eps = 1e-3, f32 forward, sum of <= 60 terms):
// rounding ~ 60 * 2^-24 * |y| / eps ~ 4e-4 of max|grad|, truncation ~ eps^2,
// checked at 1e-2.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/activation.h"
#include "kernels/cpu/common.h"
#include "tests/support/kernel_check.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

const double kS = std::sqrt(2.0 / M_PI);

double gelu(double x) { return 0.5 * x * (1 + std::tanh(kS * (x + 0.044715 * x * x * x))); }
double gelu_grad(double x) {
  const double t = std::tanh(kS * (x + 0.044715 * x * x * x));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * kS * (1 + 3 * 0.044715 * x * x);
}
double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

const Shape kShapes[] = {{1}, {7}, {3, 5}, {2, 3, 17}, {129, 257}};

}  // namespace

TEST(Gelu, ForwardAndBackwardMatchTheFormula) {
  uint32_t s = 1;
  for (const Shape& shape : kShapes) {
    Tensor x = random_tensor(shape, s++, -6.0f, 6.0f), dy = random_tensor(shape, s++);
    const auto vx = values(x), vdy = values(dy);
    std::vector<double> y(vx.size()), dx(vx.size());
    for (size_t i = 0; i < vx.size(); ++i) {
      y[i] = gelu(vx[i]);
      dx[i] = vdy[i] * gelu_grad(vx[i]);
    }
    Tensor out = Tensor::full(shape, std::numeric_limits<float>::quiet_NaN());
    kernels::gelu_forward(x, out);
    EXPECT_LT(rel_error(out, y), 1e-5) << shape_str(shape);
    Tensor g = Tensor::full(shape, std::numeric_limits<float>::quiet_NaN());
    kernels::gelu_backward(dy, x, g);
    EXPECT_LT(rel_error(g, dx), 1e-5) << shape_str(shape);
    // y aliasing x, dx aliasing dy: same bits.
    Tensor xi = x.clone();
    kernels::gelu_forward(xi, xi);
    EXPECT_TRUE(bitwise_equal(xi, out));
    Tensor gi = dy.clone();
    kernels::gelu_backward(gi, x, gi);
    EXPECT_TRUE(bitwise_equal(gi, g));
  }
}

TEST(Gelu, KnownValuesAndTails) {
  // gelu(0) = 0 and gelu'(0) = 1/2 exactly; far tails are x and 0 (tanh saturates).
  Tensor x = Tensor::from_vector(std::vector<float>{0.0f, 20.0f, -20.0f, 1.0f}, {4});
  Tensor y = Tensor::empty({4}), dx = Tensor::empty({4}), ones = Tensor::full({4}, 1.0);
  kernels::gelu_forward(x, y);
  kernels::gelu_backward(ones, x, dx);
  EXPECT_EQ(y.item_at({0}), 0.0);
  EXPECT_EQ(y.item_at({1}), 20.0);
  EXPECT_EQ(y.item_at({2}), 0.0);
  EXPECT_NEAR(y.item_at({3}), gelu(1.0), 1e-6);
  EXPECT_EQ(dx.item_at({0}), 0.5);
  EXPECT_EQ(dx.item_at({1}), 1.0);
  EXPECT_EQ(dx.item_at({2}), 0.0);
}

TEST(Gelu, BackwardMatchesFiniteDifferences) {
  Tensor x = random_tensor({3, 11}, 10, -3.0f, 3.0f), r = random_tensor({3, 11}, 11);
  Tensor y = Tensor::empty({3, 11});
  auto loss = [&] {
    kernels::gelu_forward(x, y);
    return dot(y, r);
  };
  const Tensor fd = finite_difference_grad(x, loss);
  Tensor dx = Tensor::empty({3, 11});
  kernels::gelu_backward(r, x, dx);
  EXPECT_LT(max_rel_diff(dx, fd), 1e-2);
}

TEST(SwiGLU, ForwardAndBackwardMatchTheFormula) {
  uint32_t s = 20;
  for (const Shape& shape : kShapes) {
    Tensor gate = random_tensor(shape, s++, -8.0f, 8.0f), up = random_tensor(shape, s++, -2.0f, 2.0f);
    Tensor dy = random_tensor(shape, s++);
    const auto vg = values(gate), vu = values(up), vdy = values(dy);
    std::vector<double> y(vg.size()), dg(vg.size()), du(vg.size());
    for (size_t i = 0; i < vg.size(); ++i) {
      const double sg = sigmoid(vg[i]);
      y[i] = vg[i] * sg * vu[i];
      dg[i] = vdy[i] * vu[i] * (sg + vg[i] * sg * (1 - sg));
      du[i] = vdy[i] * vg[i] * sg;
    }
    Tensor out = Tensor::full(shape, std::numeric_limits<float>::quiet_NaN());
    kernels::swiglu_forward(gate, up, out);
    EXPECT_LT(rel_error(out, y), 1e-5) << shape_str(shape);
    Tensor dgate = Tensor::full(shape, std::numeric_limits<float>::quiet_NaN()), dup = Tensor::empty(shape);
    kernels::swiglu_backward(dy, gate, up, dgate, dup);
    EXPECT_LT(rel_error(dgate, dg), 1e-5) << shape_str(shape);
    EXPECT_LT(rel_error(dup, du), 1e-5) << shape_str(shape);
    // dgate aliasing dy, then dup aliasing dy: same bits.
    Tensor a = dy.clone(), other = Tensor::empty(shape);
    kernels::swiglu_backward(a, gate, up, a, other);
    EXPECT_TRUE(bitwise_equal(a, dgate));
    EXPECT_TRUE(bitwise_equal(other, dup));
    Tensor b = dy.clone();
    kernels::swiglu_backward(b, gate, up, other, b);
    EXPECT_TRUE(bitwise_equal(b, dup));
    EXPECT_TRUE(bitwise_equal(other, dgate));
  }
}

TEST(SwiGLU, BackwardMatchesFiniteDifferences) {
  Tensor gate = random_tensor({4, 9}, 30, -4.0f, 4.0f), up = random_tensor({4, 9}, 31), r = random_tensor({4, 9}, 32);
  Tensor y = Tensor::empty({4, 9});
  auto loss = [&] {
    kernels::swiglu_forward(gate, up, y);
    return dot(y, r);
  };
  const Tensor fg = finite_difference_grad(gate, loss), fu = finite_difference_grad(up, loss);
  Tensor dg = Tensor::empty({4, 9}), du = Tensor::empty({4, 9});
  kernels::swiglu_backward(r, gate, up, dg, du);
  EXPECT_LT(max_rel_diff(dg, fg), 1e-2);
  EXPECT_LT(max_rel_diff(du, fu), 1e-2);
}

TEST(Activation, StridedViewsAndErrors) {
  // gate and up as the two halves of a fused [rows, 2F] projection.
  Tensor fused = random_tensor({33, 2 * 45}, 40, -3.0f, 3.0f);
  Tensor gate = fused.slice(1, 0, 45), up = fused.slice(1, 45, 90);
  Tensor y = Tensor::empty({33, 45});
  kernels::swiglu_forward(gate, up, y);
  const auto vg = values(gate), vu = values(up);
  std::vector<double> want(vg.size());
  for (size_t i = 0; i < vg.size(); ++i) want[i] = vg[i] * sigmoid(vg[i]) * vu[i];
  EXPECT_LT(rel_error(y, want), 1e-5);
  // GELU written into the second half of the fused buffer, leaving the first alone.
  const auto before = values(fused);
  Tensor src = random_tensor({33, 45}, 41);
  kernels::gelu_forward(src, up);
  const auto after = values(fused), vs = values(src);
  for (int64_t r = 0; r < 33; ++r)
    for (int64_t j = 0; j < 90; ++j) {
      if (j < 45) ASSERT_EQ(after[r * 90 + j], before[r * 90 + j]);
      else ASSERT_NEAR(after[r * 90 + j], gelu(vs[r * 45 + j - 45]), 1e-6);
    }

  Tensor a = random_tensor({3, 4}, 42), b = random_tensor({4, 3}, 43), out = Tensor::empty({3, 4});
  expect_error_containing([&] { kernels::swiglu_forward(a, b, out); }, {"swiglu_forward", "[3, 4]", "[4, 3]"});
  expect_error_containing([&] { kernels::gelu_backward(a, b, out); }, {"gelu_backward", "[3, 4]", "[4, 3]"});
  Tensor same = Tensor::empty({3, 4});
  expect_error_containing([&] { kernels::swiglu_backward(a, a, a, same, same); }, {"swiglu_backward", "dgate"});
  Tensor yc = fake_cuda_tensor({3, 4});
  expect_error_containing([&] { kernels::gelu_forward(a, yc); },
                          {"gelu_forward", "y", "cuda:0", cuda_operand_on_cpu_error()});
}

TEST(Activation, VectorisableExpAndSigmoidAreAccurate) {
  // vexp backs GELU, SwiGLU and cross-entropy. Against double exp over its whole
  // range: Cephes expf is within 2 ulp (2.4e-7 relative), checked at 3e-7.
  double worst = 0;
  for (int i = 0; i <= 2000000; ++i) {
    const float x = -87.0f + 175.0f * static_cast<float>(i) / 2000000.0f;
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(kernels::cpu::vexp(x) - want) / want);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(kernels::cpu::vexp(0.0f), 1.0f);
  EXPECT_EQ(kernels::cpu::vexp(-100.0f), 0.0f);
  EXPECT_TRUE(std::isfinite(kernels::cpu::vexp(1000.0f)));
  EXPECT_TRUE(std::isnan(kernels::cpu::vexp(std::numeric_limits<float>::quiet_NaN())));
  for (float x : {-200.0f, -30.0f, -3.0f, -0.1f, 0.0f, 0.1f, 3.0f, 30.0f, 200.0f})
    EXPECT_NEAR(kernels::cpu::vsigmoid(x), sigmoid(x), 3e-7 * sigmoid(x) + 1e-45) << x;
  EXPECT_TRUE(std::isnan(kernels::cpu::vsigmoid(std::numeric_limits<float>::quiet_NaN())));
}

TEST(ResidualSilu, ForwardAndBackwardMatchTheFormula) {
  uint32_t s = 40;
  for (const Shape& shape : kShapes) {
    Tensor x = random_tensor(shape, s++, -2.0f, 2.0f), pre = random_tensor(shape, s++, -8.0f, 8.0f);
    Tensor dy = random_tensor(shape, s++);
    const auto vx = values(x), vp = values(pre), vdy = values(dy);
    std::vector<double> y(vx.size()), dp(vx.size());
    for (size_t i = 0; i < vx.size(); ++i) {
      const double sg = sigmoid(vp[i]);
      y[i] = vx[i] + vp[i] * sg;
      dp[i] = vdy[i] * (sg + vp[i] * sg * (1 - sg));
    }
    Tensor out = Tensor::full(shape, std::numeric_limits<float>::quiet_NaN());
    kernels::residual_silu_forward(x, pre, out);
    EXPECT_LT(rel_error(out, y), 1e-5) << shape_str(shape);
    Tensor dpre = Tensor::full(shape, std::numeric_limits<float>::quiet_NaN());
    kernels::silu_backward(dy, pre, dpre);
    EXPECT_LT(rel_error(dpre, dp), 1e-5) << shape_str(shape);
    // y aliasing x, y aliasing pre, dpre aliasing dy: same bits.
    Tensor xi = x.clone(), pi = pre.clone(), di = dy.clone();
    kernels::residual_silu_forward(xi, pre, xi);
    kernels::residual_silu_forward(x, pi, pi);
    kernels::silu_backward(di, pre, di);
    EXPECT_TRUE(bitwise_equal(xi, out));
    EXPECT_TRUE(bitwise_equal(pi, out));
    EXPECT_TRUE(bitwise_equal(di, dpre));
  }
}

TEST(ResidualSilu, BackwardMatchesFiniteDifferences) {
  Tensor x = random_tensor({3, 11}, 50), pre = random_tensor({3, 11}, 51, -3.0f, 3.0f), r = random_tensor({3, 11}, 52);
  Tensor y = Tensor::empty({3, 11});
  auto loss = [&] {
    kernels::residual_silu_forward(x, pre, y);
    return dot(y, r);
  };
  const Tensor fd = finite_difference_grad(pre, loss);
  Tensor dpre = Tensor::empty({3, 11});
  kernels::silu_backward(r, pre, dpre);
  EXPECT_LT(max_rel_diff(dpre, fd), 1e-2);
}
