// kernels/elementwise: residual/bias adds, scaling and reductions against naive
// loops in double, on odd shapes, strided views, aliasing, sizes that take the
// OpenMP path, and thread-count independence of the reductions.
//
// Tolerances: single f32 ops (add, axpy, scale) are correctly rounded, so they
// match the double reference to 2^-24 relative (checked at 1e-6). Column sums of
// R rows accumulate in f32 within chunks: error <~ R * 2^-24 * max|x|, i.e. 6e-5
// relative for R = 1000 (checked at 1e-4). Whole-tensor reductions are in double
// (checked at 1e-12).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/elementwise.h"
#include "tests/support/kernel_check.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// Column sums of x viewed as [rows, n], in double.
std::vector<double> naive_column_sums(const Tensor& x, int64_t n) {
  const auto v = values(x);
  std::vector<double> out(static_cast<size_t>(n), 0.0);
  for (size_t i = 0; i < v.size(); ++i) out[i % n] += v[i];
  return out;
}

}  // namespace

TEST(Elementwise, AddAxpyScaleMatchNaiveLoops) {
  for (const Shape& shape : {Shape{1}, Shape{7}, Shape{3, 5}, Shape{2, 3, 17}, Shape{300, 301}}) {
    Tensor a = random_tensor(shape, 1), b = random_tensor(shape, 2);
    const auto va = values(a), vb = values(b);
    std::vector<double> sum(va.size()), ax(va.size()), sc(va.size());
    for (size_t i = 0; i < va.size(); ++i) {
      sum[i] = va[i] + vb[i];
      ax[i] = -0.75 * va[i] + vb[i];
      sc[i] = 3.5 * va[i];
    }
    Tensor out = Tensor::full(shape, std::numeric_limits<float>::quiet_NaN());
    kernels::add(a, b, out);
    EXPECT_LT(rel_error(out, sum), 1e-6) << shape_str(shape);

    Tensor y = b.clone();
    kernels::add_inplace(y, a);
    EXPECT_LT(rel_error(y, sum), 1e-6);

    Tensor z = b.clone();
    kernels::axpy(-0.75f, a, z);
    EXPECT_LT(rel_error(z, ax), 1e-6);

    Tensor s = a.clone();
    kernels::scale_inplace(s, 3.5f);
    EXPECT_LT(rel_error(s, sc), 1e-6);

    // out aliasing a (then b) gives the same bits as a separate output.
    Tensor a2 = a.clone();
    kernels::add(a2, b, a2);
    EXPECT_TRUE(bitwise_equal(a2, out));
    Tensor b2 = b.clone();
    kernels::add(a, b2, b2);
    EXPECT_TRUE(bitwise_equal(b2, out));
  }
}

TEST(Elementwise, StridedViewsLeaveNeighboursAlone) {
  // Column slices of wider buffers: rows are not contiguous with each other.
  Tensor abuf = random_tensor({9, 20}, 3), bbuf = random_tensor({9, 21}, 4), obuf = random_tensor({9, 15}, 5);
  Tensor a = abuf.slice(1, 2, 13), b = bbuf.slice(1, 5, 16), out = obuf.slice(1, 3, 14);
  const auto before = values(obuf);
  const auto va = values(a), vb = values(b);
  std::vector<double> want(va.size());
  for (size_t i = 0; i < va.size(); ++i) want[i] = va[i] + vb[i];
  kernels::add(a, b, out);
  EXPECT_LT(rel_error(out, want), 1e-6);
  const auto after = values(obuf);
  for (int64_t r = 0; r < 9; ++r)
    for (int64_t j = 0; j < 15; ++j)
      if (j < 3 || j >= 14) ASSERT_EQ(after[r * 15 + j], before[r * 15 + j]);
  // A strided scale touches only the view.
  kernels::scale_inplace(out, 0.0f);
  const auto zeroed = values(obuf);
  for (int64_t r = 0; r < 9; ++r)
    for (int64_t j = 0; j < 15; ++j) ASSERT_EQ(zeroed[r * 15 + j], (j < 3 || j >= 14) ? before[r * 15 + j] : 0.0);
}

TEST(Elementwise, AddBiasBroadcastsOverRows) {
  for (const Shape& shape : {Shape{1, 5}, Shape{4, 9}, Shape{2, 3, 13}, Shape{512, 129}}) {
    const int64_t n = shape.back();
    Tensor y = random_tensor(shape, 6), bias = random_tensor({n}, 7);
    const auto vy = values(y), vb = values(bias);
    std::vector<double> want(vy.size());
    for (size_t i = 0; i < vy.size(); ++i) want[i] = vy[i] + vb[i % n];
    kernels::add_bias(y, bias);
    EXPECT_LT(rel_error(y, want), 1e-6) << shape_str(shape);
  }
  Tensor y = random_tensor({4, 9}, 8), bad = random_tensor({8}, 9);
  expect_error_containing([&] { kernels::add_bias(y, bad); }, {"add_bias", "[8]", "[4, 9]"});
}

TEST(Elementwise, BiasGradAccumulatesAndSumRowsAssigns) {
  for (const Shape& shape : {Shape{1, 3}, Shape{5, 7}, Shape{2, 3, 11}, Shape{1000, 67}}) {
    const int64_t n = shape.back();
    Tensor dy = random_tensor(shape, 10);
    const auto col = naive_column_sums(dy, n);
    Tensor dbias = random_tensor({n}, 11);
    const auto old = values(dbias);
    std::vector<double> acc(col.size());
    for (size_t j = 0; j < col.size(); ++j) acc[j] = old[j] + col[j];
    kernels::bias_grad(dy, dbias);
    EXPECT_LT(rel_error(dbias, acc), 1e-4) << shape_str(shape);

    Tensor out = Tensor::full({n}, std::numeric_limits<float>::quiet_NaN());
    kernels::sum_rows(dy, out);
    EXPECT_LT(rel_error(out, col), 1e-4) << shape_str(shape);
  }
}

TEST(Elementwise, ColumnSumsAreIndependentOfThreadCount) {
  Tensor dy = random_tensor({1531, 97}, 12);
  Tensor one = Tensor::zeros({97}), many = Tensor::zeros({97});
  with_threads(1, [&] { kernels::bias_grad(dy, one); });
  with_threads(3, [&] { kernels::bias_grad(dy, many); });
  EXPECT_TRUE(bitwise_equal(one, many));
}

// The list form sums the tensors' sums of squares in list order (bitwise the same as doing it
// by hand, so grad norms do not change); an empty list is 0.
TEST(Elementwise, SumSquaresOfAListIsTheSumOverItsTensors) {
  const Tensor a = random_tensor({3, 7}, 21), b = random_tensor({100003}, 22), c = Tensor::empty({0});
  const Tensor v = random_tensor({6, 10}, 23).slice(1, 2, 9);
  EXPECT_EQ(kernels::sum_squares(std::vector<Tensor>{a, b, c, v}),
            kernels::sum_squares(a) + kernels::sum_squares(b) + kernels::sum_squares(c) + kernels::sum_squares(v));
  EXPECT_EQ(kernels::sum_squares(std::vector<Tensor>{}), 0.0);
}

TEST(Elementwise, WholeTensorReductionsInDouble) {
  for (const Shape& shape : {Shape{1}, Shape{13}, Shape{3, 7}, Shape{100003}, Shape{37, 4099}}) {
    Tensor x = random_tensor(shape, 13, -2.0f, 2.0f);
    double s = 0, s2 = 0, m = 0;
    for (double v : values(x)) {
      s += v;
      s2 += v * v;
      m = std::max(m, std::fabs(v));
    }
    EXPECT_NEAR(kernels::sum(x), s, 1e-12 * (1 + std::fabs(s) + x.numel())) << shape_str(shape);
    EXPECT_NEAR(kernels::sum_squares(x), s2, 1e-12 * (1 + s2)) << shape_str(shape);
    EXPECT_EQ(kernels::max_abs(x), m) << shape_str(shape);  // exact: max of exact |values|
    double t1 = 0, t2 = 0;
    with_threads(1, [&] { t1 = kernels::sum_squares(x); });
    with_threads(3, [&] { t2 = kernels::sum_squares(x); });
    EXPECT_EQ(t1, t2);
  }
  // A strided view reduces only its own elements.
  Tensor buf = Tensor::full({4, 10}, 100.0);
  Tensor view = buf.slice(1, 2, 5);
  view.fill_(-0.5);
  EXPECT_EQ(kernels::sum(view), -6.0);  // exact in binary
  EXPECT_EQ(kernels::sum_squares(view), 3.0);
  EXPECT_EQ(kernels::max_abs(view), 0.5);
  // NaN is reported, not skipped.
  Tensor bad = random_tensor({50000}, 14);
  bad.data<float>()[31337] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(kernels::max_abs(bad)));
  EXPECT_TRUE(std::isnan(kernels::sum_squares(bad)));
}

TEST(Elementwise, ShapeMismatchNamesOpArgumentsAndShapes) {
  Tensor a = random_tensor({3, 4}, 15), b = random_tensor({4, 3}, 16), out = Tensor::empty({3, 4});
  expect_error_containing([&] { kernels::add(a, b, out); }, {"add", "a", "b", "[3, 4]", "[4, 3]"});
  expect_error_containing([&] { kernels::axpy(1.0f, b, out); }, {"axpy", "[3, 4]", "[4, 3]"});
  Tensor dbias = Tensor::zeros({5});
  expect_error_containing([&] { kernels::bias_grad(a, dbias); }, {"bias_grad", "[5]", "[3, 4]"});
  EXPECT_THROW(kernels::add_inplace(out, a.to(DType::BF16)), Error);
}

TEST(Elementwise, CudaOperandsOfACpuCallAreRefused) {
  Tensor xc = fake_cuda_tensor({4}), y = Tensor::zeros({4});
  expect_error_containing([&] { kernels::add_inplace(y, xc); }, {"add_inplace", "x", "cuda:0", cuda_operand_on_cpu_error()});
  expect_error_containing([&] { kernels::axpy(2.0f, xc, y); }, {"axpy", "x", "cuda:0", cuda_operand_on_cpu_error()});
  if (!cuda_built()) {  // built, a lone CUDA tensor is the GPU's (and this one has no memory)
    expect_error_containing([&] { kernels::scale_inplace(xc, 2.0f); }, {"scale_inplace", "CUDA backend is not built"});
    expect_error_containing([&] { kernels::sum(xc); }, {"sum", "CUDA backend is not built"});
  }
}
