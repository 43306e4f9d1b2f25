// kernels/norm: LayerNorm and RMSNorm forward/backward against naive double loops
// and central finite differences, on odd widths, single rows, 3-D inputs, strided
// rows, aliasing, skipped optional outputs and thread-count independence.
//
// Tolerances: the forward is a C-term f32 reduction per row then one rounding per
// output: error <~ C * 2^-24 relative (C <= 301: 2e-5, checked at 5e-5). The
// backward subtracts two row means from dy * w, losing up to ~1 more digit to
// cancellation: checked at 2e-4. Parameter gradients sum R rows in f32: R * 2^-24
// (R <= 1000: 6e-5, checked at 2e-4). Finite differences (eps = 1e-3, f32
// forward): truncation O(eps^2) ~ 1e-6 and rounding ~ n * 2^-24 / eps ~ 1e-4
// relative, so 1e-2 catches any wrong term (those are O(1)) without flaking.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/norm.h"
#include "tests/support/kernel_check.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr float kEps = 1e-5f;

struct NormRef {
  std::vector<double> y, mean, rstd, dx, dw, db;
};

// LayerNorm (rms = false) or RMSNorm (rms = true) over rows of width C, in double.
NormRef naive_norm(bool rms, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& dy) {
  const auto vx = values(x), vw = values(w), vdy = values(dy);
  const std::vector<double> vb = b.defined() ? values(b) : std::vector<double>(vw.size(), 0.0);
  const size_t C = vw.size(), R = vx.size() / C;
  NormRef o;
  o.y.resize(vx.size());
  o.dx.resize(vx.size());
  o.dw.assign(C, 0.0);
  o.db.assign(C, 0.0);
  for (size_t r = 0; r < R; ++r) {
    const double* xr = &vx[r * C];
    const double* g = &vdy[r * C];
    double m = 0, v = 0;
    if (!rms) {
      for (size_t j = 0; j < C; ++j) m += xr[j];
      m /= C;
    }
    for (size_t j = 0; j < C; ++j) v += (xr[j] - m) * (xr[j] - m);
    const double rs = 1.0 / std::sqrt(v / C + kEps);
    o.mean.push_back(m);
    o.rstd.push_back(rs);
    double mg = 0, mgx = 0;
    for (size_t j = 0; j < C; ++j) {
      const double xh = (xr[j] - m) * rs;
      o.y[r * C + j] = xh * vw[j] + (rms ? 0.0 : vb[j]);
      mg += g[j] * vw[j] / C;
      mgx += g[j] * vw[j] * xh / C;
      o.dw[j] += g[j] * xh;
      o.db[j] += g[j];
    }
    for (size_t j = 0; j < C; ++j) {
      const double xh = (xr[j] - m) * rs;
      o.dx[r * C + j] = rs * (g[j] * vw[j] - (rms ? 0.0 : mg) - xh * mgx);
    }
  }
  return o;
}

std::vector<double> plus(std::vector<double> a, const std::vector<double>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

const Shape kShapes[] = {{1, 1}, {1, 7}, {5, 37}, {2, 3, 19}, {64, 301}};

}  // namespace

TEST(LayerNorm, ForwardMatchesNaiveLoop) {
  uint32_t s = 1;
  for (const Shape& shape : kShapes) {
    const int64_t C = shape.back(), R = shape_numel(shape) / C;
    for (bool with_bias : {true, false}) {
      Tensor x = random_tensor(shape, s++, -2.0f, 3.0f), w = random_tensor({C}, s++), b;
      if (with_bias) b = random_tensor({C}, s++);
      Tensor y = Tensor::full(shape, std::numeric_limits<float>::quiet_NaN());
      Tensor mean = Tensor::empty({R}), rstd = Tensor::empty({R});
      kernels::layernorm_forward(x, w, b, kEps, y, mean, rstd);
      const NormRef ref = naive_norm(false, x, w, b, x);
      EXPECT_LT(rel_error(y, ref.y), 5e-5) << shape_str(shape);
      EXPECT_LT(rel_error(mean, ref.mean), 5e-5) << shape_str(shape);
      EXPECT_LT(rel_error(rstd, ref.rstd), 5e-5) << shape_str(shape);
      // In place (y aliasing x) and without saved statistics: same bits.
      Tensor xi = x.clone(), none;
      kernels::layernorm_forward(xi, w, b, kEps, xi, none, none);
      EXPECT_TRUE(bitwise_equal(xi, y));
    }
  }
}

TEST(LayerNorm, BackwardMatchesNaiveLoopAndAccumulatesParams) {
  uint32_t s = 20;
  for (const Shape& shape : kShapes) {
    const int64_t C = shape.back(), R = shape_numel(shape) / C;
    Tensor x = random_tensor(shape, s++), w = random_tensor({C}, s++), b = random_tensor({C}, s++);
    Tensor dy = random_tensor(shape, s++);
    Tensor y = Tensor::empty(shape), mean = Tensor::empty({R}), rstd = Tensor::empty({R});
    kernels::layernorm_forward(x, w, b, kEps, y, mean, rstd);
    Tensor dx = Tensor::full(shape, std::numeric_limits<float>::quiet_NaN());
    Tensor dw = random_tensor({C}, s++), db = random_tensor({C}, s++);
    const auto dw0 = values(dw), db0 = values(db);
    kernels::layernorm_backward(dy, x, w, mean, rstd, dx, dw, db);
    const NormRef ref = naive_norm(false, x, w, b, dy);
    if (C > 1) EXPECT_LT(rel_error(dx, ref.dx), 2e-4) << shape_str(shape);
    // C = 1: y is constant in x, so dx = rstd * (dy*w - mean(dy*w)) is zero up to the
    // rounding of dy*w (2^-24, FMA-contracted or not) times rstd = 1/sqrt(eps) ~ 316.
    else for (float v : dx.to_vector()) EXPECT_NEAR(v, 0.0, 1e-4);
    EXPECT_LT(rel_error(dw, plus(ref.dw, dw0)), 2e-4) << shape_str(shape);
    EXPECT_LT(rel_error(db, plus(ref.db, db0)), 2e-4) << shape_str(shape);

    // dx aliasing dy, and undefined dweight/dbias (skipped): dx unchanged.
    Tensor inplace = dy.clone(), none;
    kernels::layernorm_backward(inplace, x, w, mean, rstd, inplace, none, none);
    EXPECT_TRUE(bitwise_equal(inplace, dx));
  }
}

TEST(LayerNorm, BackwardMatchesFiniteDifferences) {
  const Shape shape{3, 7};
  Tensor x = random_tensor(shape, 40), w = random_tensor({7}, 41, 0.5f, 1.5f), b = random_tensor({7}, 42);
  Tensor r = random_tensor(shape, 43);
  Tensor y = Tensor::empty(shape), mean = Tensor::empty({3}), rstd = Tensor::empty({3});
  auto loss = [&] {
    kernels::layernorm_forward(x, w, b, kEps, y, mean, rstd);
    return dot(y, r);
  };
  const Tensor fx = finite_difference_grad(x, loss), fw = finite_difference_grad(w, loss),
               fb = finite_difference_grad(b, loss);
  loss();
  Tensor dx = Tensor::empty(shape), dw = Tensor::zeros({7}), db = Tensor::zeros({7});
  kernels::layernorm_backward(r, x, w, mean, rstd, dx, dw, db);
  EXPECT_LT(max_rel_diff(dx, fx), 1e-2);
  EXPECT_LT(max_rel_diff(dw, fw), 1e-2);
  EXPECT_LT(max_rel_diff(db, fb), 1e-2);
}

TEST(LayerNorm, StridedRowsAndThreadCountIndependence) {
  // x and dy are column slices of wider buffers (row stride 80 > C = 67).
  Tensor xbuf = random_tensor({1000, 80}, 50), dybuf = random_tensor({1000, 80}, 51);
  Tensor x = xbuf.slice(1, 5, 72), dy = dybuf.slice(1, 10, 77);
  Tensor w = random_tensor({67}, 52), b = random_tensor({67}, 53);
  Tensor y = Tensor::empty({1000, 67}), mean = Tensor::empty({1000}), rstd = Tensor::empty({1000});
  kernels::layernorm_forward(x, w, b, kEps, y, mean, rstd);
  const NormRef ref = naive_norm(false, x, w, b, dy);
  EXPECT_LT(rel_error(y, ref.y), 5e-5);
  Tensor dx1 = Tensor::empty({1000, 67}), dw1 = Tensor::zeros({67}), db1 = Tensor::zeros({67});
  Tensor dx3 = Tensor::empty({1000, 67}), dw3 = Tensor::zeros({67}), db3 = Tensor::zeros({67});
  with_threads(1, [&] { kernels::layernorm_backward(dy, x, w, mean, rstd, dx1, dw1, db1); });
  with_threads(3, [&] { kernels::layernorm_backward(dy, x, w, mean, rstd, dx3, dw3, db3); });
  EXPECT_LT(rel_error(dx1, ref.dx), 2e-4);
  EXPECT_LT(rel_error(dw1, ref.dw), 2e-4);
  EXPECT_LT(rel_error(db1, ref.db), 2e-4);
  EXPECT_TRUE(bitwise_equal(dx1, dx3));
  EXPECT_TRUE(bitwise_equal(dw1, dw3));
  EXPECT_TRUE(bitwise_equal(db1, db3));
}

TEST(LayerNorm, RejectsMismatchedParameters) {
  Tensor x = random_tensor({4, 6}, 60), w = random_tensor({5}, 61), b;
  Tensor y = Tensor::empty({4, 6}), mean = Tensor::empty({4}), rstd = Tensor::empty({4});
  expect_error_containing([&] { kernels::layernorm_forward(x, w, b, kEps, y, mean, rstd); },
                          {"layernorm_forward", "weight", "[5]", "[4, 6]"});
  Tensor w6 = random_tensor({6}, 62), y_bad = Tensor::empty({6, 4}), rstd_bad = Tensor::empty({3});
  expect_error_containing([&] { kernels::layernorm_forward(x, w6, b, kEps, y_bad, mean, rstd); },
                          {"y", "[6, 4]", "[4, 6]"});
  expect_error_containing([&] { kernels::layernorm_forward(x, w6, b, kEps, y, mean, rstd_bad); },
                          {"rstd", "[3]", "[4, 6]"});
  Tensor yc = fake_cuda_tensor({4, 6});
  expect_error_containing([&] { kernels::layernorm_forward(x, w6, b, kEps, yc, mean, rstd); },
                          {"layernorm_forward", "y", "cuda:0", cuda_operand_on_cpu_error()});
}

TEST(RMSNorm, ForwardMatchesNaiveLoop) {
  uint32_t s = 70;
  for (const Shape& shape : kShapes) {
    const int64_t C = shape.back(), R = shape_numel(shape) / C;
    Tensor x = random_tensor(shape, s++, -2.0f, 3.0f), w = random_tensor({C}, s++), none;
    Tensor y = Tensor::full(shape, std::numeric_limits<float>::quiet_NaN()), rstd = Tensor::empty({R});
    kernels::rmsnorm_forward(x, w, kEps, y, rstd);
    const NormRef ref = naive_norm(true, x, w, none, x);
    EXPECT_LT(rel_error(y, ref.y), 5e-5) << shape_str(shape);
    EXPECT_LT(rel_error(rstd, ref.rstd), 5e-5) << shape_str(shape);
    Tensor xi = x.clone();
    kernels::rmsnorm_forward(xi, w, kEps, xi, none);
    EXPECT_TRUE(bitwise_equal(xi, y));
  }
}

TEST(RMSNorm, BackwardMatchesNaiveLoopAndAccumulatesWeight) {
  uint32_t s = 90;
  for (const Shape& shape : kShapes) {
    const int64_t C = shape.back(), R = shape_numel(shape) / C;
    Tensor x = random_tensor(shape, s++), w = random_tensor({C}, s++), dy = random_tensor(shape, s++), none;
    Tensor y = Tensor::empty(shape), rstd = Tensor::empty({R});
    kernels::rmsnorm_forward(x, w, kEps, y, rstd);
    Tensor dx = Tensor::full(shape, std::numeric_limits<float>::quiet_NaN()), dw = random_tensor({C}, s++);
    const auto dw0 = values(dw);
    kernels::rmsnorm_backward(dy, x, w, rstd, dx, dw);
    const NormRef ref = naive_norm(true, x, w, none, dy);
    // C = 1: y = w * x / sqrt(x^2 + eps) is nearly flat, dx is tiny; compare absolutely.
    if (C > 1) EXPECT_LT(rel_error(dx, ref.dx), 2e-4) << shape_str(shape);
    else EXPECT_NEAR(dx.item_at({0, 0}), ref.dx[0], 1e-3);
    EXPECT_LT(rel_error(dw, plus(ref.dw, dw0)), 2e-4) << shape_str(shape);
    Tensor inplace = dy.clone();
    kernels::rmsnorm_backward(inplace, x, w, rstd, inplace, none);
    EXPECT_TRUE(bitwise_equal(inplace, dx));
  }
}

TEST(RMSNorm, BackwardMatchesFiniteDifferences) {
  const Shape shape{4, 5};
  Tensor x = random_tensor(shape, 110), w = random_tensor({5}, 111, 0.5f, 1.5f), r = random_tensor(shape, 112);
  Tensor y = Tensor::empty(shape), rstd = Tensor::empty({4});
  auto loss = [&] {
    kernels::rmsnorm_forward(x, w, kEps, y, rstd);
    return dot(y, r);
  };
  const Tensor fx = finite_difference_grad(x, loss), fw = finite_difference_grad(w, loss);
  loss();
  Tensor dx = Tensor::empty(shape), dw = Tensor::zeros({5});
  kernels::rmsnorm_backward(r, x, w, rstd, dx, dw);
  EXPECT_LT(max_rel_diff(dx, fx), 1e-2);
  EXPECT_LT(max_rel_diff(dw, fw), 1e-2);
}

TEST(RMSNorm, WeightGradIsIndependentOfThreadCount) {
  Tensor x = random_tensor({777, 129}, 120), w = random_tensor({129}, 121), dy = random_tensor({777, 129}, 122);
  Tensor y = Tensor::empty({777, 129}), rstd = Tensor::empty({777});
  kernels::rmsnorm_forward(x, w, kEps, y, rstd);
  Tensor dx1 = Tensor::empty({777, 129}), dw1 = Tensor::zeros({129});
  Tensor dx3 = Tensor::empty({777, 129}), dw3 = Tensor::zeros({129});
  with_threads(1, [&] { kernels::rmsnorm_backward(dy, x, w, rstd, dx1, dw1); });
  with_threads(3, [&] { kernels::rmsnorm_backward(dy, x, w, rstd, dx3, dw3); });
  EXPECT_TRUE(bitwise_equal(dx1, dx3));
  EXPECT_TRUE(bitwise_equal(dw1, dw3));
  Tensor none;
  EXPECT_LT(rel_error(dw1, naive_norm(true, x, w, none, dy).dw), 2e-4);
}
