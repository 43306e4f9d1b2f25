// kernels/matmul: cblas-backed products against a naive triple loop in double, on
// odd shapes, every transpose combination, strided row views, batches and
// broadcasts, alpha/beta, and NaN garbage in c with beta = 0.
//
// Tolerance: each output is a K-term f32 dot product (sgemm may reorder/FMA it),
// so |err| <~ K * 2^-24 * max|a||b|; with |a|,|b| <= 1 and K <= 65 that is
// < 4e-6 relative to the largest output, checked at 1e-5.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/cuda_device.h"
#include "kernels/matmul.h"
#include "tests/support/kernel_check.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr double kTol = 1e-5;

// Element (r, c) of batch `i` of a 2-D or 3-D operand (batch 1 broadcasts).
double at(const Tensor& t, int64_t i, int64_t r, int64_t c) {
  if (t.dim() == 2) return t.item_at({r, c});
  return t.item_at({t.size(0) == 1 ? 0 : i, r, c});
}

// alpha * op(A) @ op(B) + beta * c_old, in double; beta == 0 ignores c_old.
std::vector<double> naive_matmul(const Tensor& a, bool ta, const Tensor& b, bool tb, const std::vector<double>& c_old,
                                 const Shape& c_shape, double alpha, double beta) {
  const int64_t B = c_shape.size() == 3 ? c_shape[0] : 1;
  const int64_t M = c_shape[c_shape.size() - 2], N = c_shape.back();
  const int64_t K = ta ? a.size(-2) : a.size(-1);
  std::vector<double> out(static_cast<size_t>(B * M * N));
  for (int64_t i = 0; i < B; ++i)
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < N; ++c) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k)
          s += (ta ? at(a, i, k, r) : at(a, i, r, k)) * (tb ? at(b, i, c, k) : at(b, i, k, c));
        const size_t o = static_cast<size_t>((i * M + r) * N + c);
        out[o] = alpha * s + (beta == 0 ? 0.0 : beta * c_old[o]);
      }
  return out;
}

// A random [rows, cols] operand stored as op^T when `trans` (so op() has rows x cols).
Tensor operand(int64_t rows, int64_t cols, bool trans, uint32_t stream) {
  return trans ? random_tensor({cols, rows}, stream) : random_tensor({rows, cols}, stream);
}

}  // namespace

TEST(Matmul, AllTransposeCombinationsOnOddShapes) {
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 17, 65}, {1, 9, 3}, {10, 1, 7}, {5, 6, 1}};
  uint32_t stream = 1;
  for (const auto& s : shapes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        Tensor a = operand(M, K, ta, stream++), b = operand(K, N, tb, stream++);
        Tensor c = Tensor::empty({M, N});
        kernels::matmul(a, ta, b, tb, c);
        const auto want = naive_matmul(a, ta, b, tb, {}, {M, N}, 1, 0);
        EXPECT_LT(rel_error(c, want), kTol) << "M=" << M << " N=" << N << " K=" << K << " ta=" << ta << " tb=" << tb;
        // The allocating form agrees with the in-place one.
        Tensor c2 = kernels::matmul(a, ta, b, tb);
        EXPECT_EQ(c2.shape(), (Shape{M, N}));
        EXPECT_TRUE(bitwise_equal(c2, c));
      }
  }
}

TEST(Matmul, AlphaAndBetaScaleProductAndOldC) {
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      Tensor a = operand(9, 11, ta, 10 + ta), b = operand(11, 6, tb, 20 + tb);
      Tensor c = random_tensor({9, 6}, 30);
      const auto old = values(c);
      kernels::matmul(a, ta, b, tb, c, -1.5f, 0.75f);
      EXPECT_LT(rel_error(c, naive_matmul(a, ta, b, tb, old, {9, 6}, -1.5, 0.75)), kTol);
    }
}

TEST(Matmul, BetaZeroIgnoresNaNInC) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      Tensor a = operand(8, 5, ta, 40), b = operand(5, 7, tb, 41);
      Tensor c = Tensor::full({8, 7}, nan);
      kernels::matmul(a, ta, b, tb, c, 2.0f, 0.0f);
      EXPECT_LT(rel_error(c, naive_matmul(a, ta, b, tb, {}, {8, 7}, 2, 0)), kTol);
    }
  // K = 0: the product is exactly zero, and beta = 0 still overwrites the NaN.
  Tensor a = Tensor::empty({3, 0}), b = Tensor::empty({0, 4});
  Tensor c = Tensor::full({3, 4}, nan);
  kernels::matmul(a, false, b, false, c);
  for (float v : c.to_vector()) EXPECT_EQ(v, 0.0f);
}

TEST(Matmul, StridedRowViewsIntoWiderBuffers) {
  // a, b and c are column slices of wider buffers, so lda/ldb/ldc exceed the widths.
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t M = 6, N = 5, K = 7;
      Tensor abuf = random_tensor({ta ? K : M, 20}, 50), bbuf = random_tensor({tb ? N : K, 19}, 51);
      Tensor a = abuf.slice(1, 3, 3 + (ta ? M : K)), b = bbuf.slice(1, 2, 2 + (tb ? K : N));
      Tensor cbuf = random_tensor({M, 13}, 52);
      const auto before = values(cbuf);
      Tensor c = cbuf.slice(1, 4, 4 + N);
      const auto old = values(c);
      kernels::matmul(a, ta, b, tb, c, 1.0f, 0.5f);
      EXPECT_LT(rel_error(c, naive_matmul(a, ta, b, tb, old, {M, N}, 1, 0.5)), kTol) << ta << tb;
      // Columns of the wider buffer outside the view are untouched.
      const auto after = values(cbuf);
      for (int64_t r = 0; r < M; ++r)
        for (int64_t j = 0; j < 13; ++j)
          if (j < 4 || j >= 4 + N) ASSERT_EQ(after[r * 13 + j], before[r * 13 + j]) << r << "," << j;
    }
}

TEST(Matmul, SingleRowMatrixVectorPath) {
  // M = 1 (one decoded token) goes through sgemv: every transpose combination,
  // operands that are slices of wider buffers (a^T's column has a row stride),
  // alpha/beta, and NaN in c with beta = 0.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t N = 37, K = 53;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      Tensor abuf = random_tensor({ta ? K : 1, 9 + K}, 60), bbuf = random_tensor({tb ? N : K, 70}, 61);
      Tensor a = abuf.slice(1, 2, 2 + (ta ? 1 : K)), b = bbuf.slice(1, 5, 5 + (tb ? K : N));
      for (const float beta : {0.0f, -0.5f}) {
        Tensor cbuf = random_tensor({1, N + 8}, 62);
        Tensor c = cbuf.slice(1, 3, 3 + N);
        if (beta == 0.0f) c.fill_(nan);
        const auto before = values(cbuf), old = values(c);
        kernels::matmul(a, ta, b, tb, c, 1.25f, beta);
        EXPECT_LT(rel_error(c, naive_matmul(a, ta, b, tb, old, {1, N}, 1.25, beta)), kTol)
            << "ta=" << ta << " tb=" << tb << " beta=" << beta;
        const auto after = values(cbuf);
        for (int64_t j = 0; j < N + 8; ++j)
          if (j < 3 || j >= 3 + N) EXPECT_EQ(after[j], before[j]) << "wrote outside the view at " << j;
      }
    }
}

TEST(Matmul, BatchedAndBroadcast) {
  const int64_t B = 3, M = 5, N = 7, K = 9;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const Shape sa = ta ? Shape{K, M} : Shape{M, K}, sb = tb ? Shape{N, K} : Shape{K, N};
      auto batched = [](int64_t n, const Shape& s) { return Shape{n, s[0], s[1]}; };
      struct Case { int64_t ba, bb; bool a2d, b2d; };
      const Case cases[] = {{B, B, false, false}, {1, B, false, false}, {B, 1, false, false},
                            {B, 1, false, true}, {1, B, true, false}};
      uint32_t stream = 60;
      for (const Case& cs : cases) {
        Tensor a = cs.a2d ? random_tensor(sa, stream++) : random_tensor(batched(cs.ba, sa), stream++);
        Tensor b = cs.b2d ? random_tensor(sb, stream++) : random_tensor(batched(cs.bb, sb), stream++);
        Tensor c = random_tensor({B, M, N}, stream++);
        const auto old = values(c);
        kernels::matmul(a, ta, b, tb, c, 0.5f, -1.0f);
        EXPECT_LT(rel_error(c, naive_matmul(a, ta, b, tb, old, {B, M, N}, 0.5, -1)), kTol)
            << "ta=" << ta << " tb=" << tb << " a " << shape_str(a.shape()) << " b " << shape_str(b.shape());
        Tensor c2 = kernels::matmul(a, ta, b, tb);
        EXPECT_EQ(c2.shape(), (Shape{B, M, N}));
        EXPECT_LT(rel_error(c2, naive_matmul(a, ta, b, tb, {}, {B, M, N}, 1, 0)), kTol);
      }
    }
}

TEST(Matmul, BatchedStridedViews) {
  // Batches that are not back to back (a slice of a wider batch buffer, c a column
  // slice) take the per-batch loop; the result must still match.
  const int64_t B = 2, M = 4, N = 3, K = 6;
  Tensor abuf = random_tensor({B, M + 2, K + 3}, 70);
  Tensor a = abuf.slice(1, 1, 1 + M).slice(2, 0, K);
  Tensor b = random_tensor({K, N}, 71);
  Tensor cbuf = Tensor::full({B, M, N + 2}, std::numeric_limits<float>::quiet_NaN());
  Tensor c = cbuf.slice(2, 1, 1 + N);
  kernels::matmul(a, false, b, false, c);
  EXPECT_LT(rel_error(c, naive_matmul(a, false, b, false, {}, {B, M, N}, 1, 0)), kTol);
}

TEST(Matmul, RejectsBadShapesWithBothShapesInTheMessage) {
  Tensor a = random_tensor({4, 5}, 80), b = random_tensor({6, 3}, 81);
  Tensor c = Tensor::empty({4, 3});
  expect_error_containing([&] { kernels::matmul(a, false, b, false, c); }, {"matmul", "[4, 5]", "[6, 3]"});
  Tensor b_ok = random_tensor({5, 3}, 82);
  Tensor c_bad = Tensor::empty({4, 4});
  expect_error_containing([&] { kernels::matmul(a, false, b_ok, false, c_bad); }, {"matmul", "[4, 4]", "[4, 3]"});
  // Batch sizes that do not broadcast.
  Tensor a3 = random_tensor({2, 4, 5}, 83), b3 = random_tensor({3, 5, 3}, 84);
  Tensor c3 = Tensor::empty({3, 4, 3});
  expect_error_containing([&] { kernels::matmul(a3, false, b3, false, c3); }, {"[2, 4, 5]", "[3, 5, 3]"});
  // A non-contiguous last dimension.
  Tensor at = random_tensor({5, 4}, 85).transpose(0, 1);
  EXPECT_THROW(kernels::matmul(at, false, b_ok, false, c), Error);
  // Wrong dtype.
  EXPECT_THROW(kernels::matmul(a.to(DType::BF16), false, b_ok, false, c), Error);
}

TEST(Matmul, RejectsOutputOverlappingAnInput) {
  Tensor buf = random_tensor({4, 8}, 90);
  Tensor a = buf.slice(1, 0, 4), c = buf.slice(1, 2, 6);
  Tensor b = random_tensor({4, 4}, 91);
  expect_error_containing([&] { kernels::matmul(a, false, b, false, c); }, {"overlaps"});
  // Disjoint views of one buffer are fine.
  Tensor c_ok = buf.slice(1, 4, 8);
  const auto want = naive_matmul(a, false, b, false, {}, {4, 4}, 1, 0);
  kernels::matmul(a, false, b, false, c_ok);
  EXPECT_LT(rel_error(c_ok, want), kTol);
}

// A CUDA tensor goes to the CUDA backend when it is built (which checks that the device
// exists and that every operand is on it); without the backend the CPU kernel names what is missing.
TEST(Matmul, CudaTensorsGoToTheCudaBackendOrSayItIsNotBuilt) {
  Tensor a = fake_cuda_tensor({2, 2}), b = fake_cuda_tensor({2, 2}), c = fake_cuda_tensor({2, 2});
  if (!cuda_built()) {
    expect_error_containing([&] { kernels::matmul(a, false, b, false, c); }, {"matmul", "CUDA backend is not built"});
    expect_error_containing([&] { kernels::matmul(a, false, b, false); }, {"CUDA backend is not built"});
  } else if (cuda_device_count() == 0) {
    expect_error_containing([&] { kernels::matmul(a, false, b, false, c); }, {"matmul", "cuda:0 does not exist"});
    expect_error_containing([&] { kernels::matmul(a, false, b, false); }, {"cuda:0 does not exist"});
  } else {
    Tensor ga = Tensor::zeros({2, 2}, DType::F32, Device::cuda(0)), gc = Tensor::zeros({2, 2}, DType::F32, Device::cuda(0));
    Tensor hb = Tensor::zeros({2, 2});
    expect_error_containing([&] { kernels::matmul(ga, false, hb, false, gc); }, {"matmul", "b", "one device"});
  }
}

// matmul_bias on the CPU: the product plus the bias on every row (assigned: NaN in c is ignored).
TEST(Matmul, MatmulBiasAddsTheBiasToEveryRow) {
  const Tensor x = random_tensor({9, 14}, 51), w = random_tensor({6, 14}, 52), bias = random_tensor({6}, 53);
  Tensor c = Tensor::full({9, 6}, std::numeric_limits<double>::quiet_NaN());
  kernels::matmul_bias(x, false, w, true, bias, c);
  std::vector<double> want = naive_matmul(x, false, w, true, {}, {9, 6}, 1.0, 0.0);
  for (int64_t r = 0; r < 9; ++r)
    for (int64_t j = 0; j < 6; ++j) want[static_cast<size_t>(r * 6 + j)] += bias.item_at({j});
  EXPECT_LT(rel_error(c, want), kTol);
}
