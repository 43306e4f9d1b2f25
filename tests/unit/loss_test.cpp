// kernels/loss: fused softmax cross-entropy against a naive double logsumexp,
// ignore_index rows, in-place backward, padded-vocabulary (strided) logits, huge
// logits, finite differences and bad targets.
//
// Tolerances: lse is a V-term f32 sum of exp (each <= 1 ulp) then a log, so its
// absolute error is <~ (V * 2^-24 + 2^-24) * max(1, |lse|): checked at 1e-5
// relative to max|lse| (V <= 1001). Gradients are single exp/multiply per
// element: 1e-5 relative. Finite differences: eps = 1e-3 on an f32 forward with
// N * V <= 44 terms: rounding ~ 44 * 2^-24 * |loss| / eps ~ 3e-3 worst case, well
// below 1e-2; any wrong term (softmax vs onehot) is O(1/V) ~ 0.1 relative.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/loss.h"
#include "tests/support/kernel_check.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr int kIgnore = -100;

struct CeRef {
  std::vector<double> loss, lse, grad;
  int64_t count = 0;
};

CeRef naive_ce(const Tensor& logits, const Tensor& targets, double scale) {
  const int64_t N = logits.size(0), V = logits.size(1);
  const auto x = values(logits);
  const int32_t* t = targets.data<int32_t>();
  CeRef o;
  o.grad.assign(static_cast<size_t>(N * V), 0.0);
  for (int64_t i = 0; i < N; ++i) {
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, x[i * V + j]);
    for (int64_t j = 0; j < V; ++j) s += std::exp(x[i * V + j] - m);
    const double lse = m + std::log(s);
    o.lse.push_back(lse);
    if (t[i] == kIgnore) {
      o.loss.push_back(0.0);
      continue;
    }
    ++o.count;
    o.loss.push_back(lse - x[i * V + t[i]]);
    for (int64_t j = 0; j < V; ++j)
      o.grad[i * V + j] = scale * (std::exp(x[i * V + j] - lse) - (j == t[i] ? 1.0 : 0.0));
  }
  return o;
}

// Targets in [0, V) with every third row ignored.
Tensor targets_with_ignores(int64_t N, int32_t V, uint32_t stream) {
  Tensor t = random_ids({N}, V, stream);
  for (int64_t i = 0; i < N; i += 3) t.data<int32_t>()[i] = kIgnore;
  return t;
}

}  // namespace

TEST(CrossEntropy, ForwardAndBackwardMatchNaiveLoops) {
  const std::pair<int64_t, int32_t> shapes[] = {{1, 1}, {1, 5}, {7, 37}, {16, 1001}, {300, 257}};
  uint32_t s = 1;
  for (const auto& [N, V] : shapes) {
    Tensor logits = random_tensor({N, V}, s++, -4.0f, 4.0f);
    Tensor targets = N == 1 ? random_ids({N}, V, s++) : targets_with_ignores(N, V, s++);
    Tensor losses = Tensor::full({N}, std::numeric_limits<float>::quiet_NaN()), lse = Tensor::empty({N});
    const int64_t count = kernels::cross_entropy_forward(logits, targets, kIgnore, losses, lse);
    const CeRef ref = naive_ce(logits, targets, count ? 1.0 / count : 0.0);
    EXPECT_EQ(count, ref.count);
    EXPECT_LT(rel_error(lse, ref.lse), 1e-5) << N << "x" << V;
    // V = 1: every loss is exactly 0.
    if (V == 1) for (float v : losses.to_vector()) EXPECT_EQ(v, 0.0f);
    else EXPECT_LT(rel_error(losses, ref.loss), 1e-5) << N << "x" << V;
    for (int64_t i = 0; i < N; ++i)
      if (targets.data<int32_t>()[i] == kIgnore) ASSERT_EQ(losses.item_at({i}), 0.0);

    const float scale = count ? 1.0f / static_cast<float>(count) : 0.0f;
    Tensor d = Tensor::full({N, V}, std::numeric_limits<float>::quiet_NaN());
    kernels::cross_entropy_backward(logits, targets, lse, kIgnore, scale, d);
    if (V == 1) for (float v : d.to_vector()) EXPECT_NEAR(v, 0.0f, 1e-7);
    else EXPECT_LT(rel_error(d, ref.grad), 1e-5) << N << "x" << V;
    for (int64_t i = 0; i < N; ++i)
      if (targets.data<int32_t>()[i] == kIgnore)
        for (int64_t j = 0; j < V; ++j) ASSERT_EQ(d.item_at({i, j}), 0.0);

    // In place: dlogits aliasing logits gives the same bits.
    Tensor inplace = logits.clone();
    kernels::cross_entropy_backward(inplace, targets, lse, kIgnore, scale, inplace);
    EXPECT_TRUE(bitwise_equal(inplace, d)) << N << "x" << V;
  }
}

TEST(CrossEntropy, HugeLogitsStayFinite) {
  // exp(1000) overflows f32 and f64; the max-shifted sum does not.
  Tensor logits = random_tensor({3, 11}, 20, -4.0f, 4.0f);
  float* p = logits.data<float>();
  for (int64_t i = 0; i < 33; ++i) p[i] += (i / 11 == 1) ? 1000.0f : -1000.0f;
  Tensor targets = Tensor::from_vector(std::vector<int32_t>{0, 5, 10}, {3});
  Tensor losses = Tensor::empty({3}), lse = Tensor::empty({3});
  kernels::cross_entropy_forward(logits, targets, kIgnore, losses, lse);
  const CeRef ref = naive_ce(logits, targets, 1.0);
  // Losses are differences of ~1000-sized f32 numbers: 1000 * 2^-24 ~ 6e-5 absolute.
  for (int64_t i = 0; i < 3; ++i) EXPECT_NEAR(losses.item_at({i}), ref.loss[i], 2e-4);
  Tensor d = Tensor::empty({3, 11});
  kernels::cross_entropy_backward(logits, targets, lse, kIgnore, 1.0f, d);
  for (float v : d.to_vector()) EXPECT_TRUE(std::isfinite(v));
  EXPECT_LT(max_abs_diff(d, Tensor::from_vector(std::vector<float>(ref.grad.begin(), ref.grad.end()), {3, 11})),
            2e-4);  // lse = m + log(s) rounds to ulp(1000)/2 ~ 3e-5, so p = exp(x - lse) is off by <~ 3e-5
}

TEST(CrossEntropy, PaddedVocabularyViewsAndMultiDimTargets) {
  // Logits as [B, T, Vpad] sliced to the real V (GPT-2 pads 50257 to 50304).
  Tensor buf = random_tensor({2, 3, 16}, 30, -3.0f, 3.0f);
  Tensor logits = buf.slice(2, 0, 13);
  Tensor targets = Tensor::from_vector(std::vector<int32_t>{1, kIgnore, 12, 0, 7, 7}, {2, 3});
  Tensor losses = Tensor::empty({2, 3}), lse = Tensor::empty({2, 3});
  const int64_t count = kernels::cross_entropy_forward(logits, targets, kIgnore, losses, lse);
  EXPECT_EQ(count, 5);
  Tensor dense = logits.contiguous().view({6, 13});
  const CeRef ref = naive_ce(dense, targets, 0.2);
  EXPECT_LT(rel_error(losses, ref.loss), 1e-5);
  // In place into the padded buffer: the padding columns are untouched.
  const auto before = values(buf);
  kernels::cross_entropy_backward(logits, targets, lse, kIgnore, 0.2f, logits);
  EXPECT_LT(rel_error(logits, ref.grad), 1e-5);
  const auto after = values(buf);
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t j = 13; j < 16; ++j) ASSERT_EQ(after[r * 16 + j], before[r * 16 + j]);
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  Tensor logits = random_tensor({4, 11}, 40, -2.0f, 2.0f);
  Tensor targets = Tensor::from_vector(std::vector<int32_t>{3, kIgnore, 0, 10}, {4});
  Tensor losses = Tensor::empty({4}), lse = Tensor::empty({4});
  const double scale = 1.0 / 3.0;
  auto loss = [&] {
    kernels::cross_entropy_forward(logits, targets, kIgnore, losses, lse);
    double s = 0;
    for (float v : losses.to_vector()) s += v;
    return s * scale;
  };
  const Tensor fd = finite_difference_grad(logits, loss);
  loss();
  Tensor d = Tensor::empty({4, 11});
  kernels::cross_entropy_backward(logits, targets, lse, kIgnore, static_cast<float>(scale), d);
  EXPECT_LT(max_rel_diff(d, fd), 1e-2);
}

TEST(CrossEntropy, BadTargetsThrowNamingRowTargetAndV) {
  Tensor logits = random_tensor({4, 9}, 50), losses = Tensor::empty({4}), lse = Tensor::empty({4});
  Tensor big = Tensor::from_vector(std::vector<int32_t>{0, 1, 9, 2}, {4});
  expect_error_containing([&] { kernels::cross_entropy_forward(logits, big, kIgnore, losses, lse); },
                          {"cross_entropy_forward", "target 9", "row 2", "9)"});
  Tensor neg = Tensor::from_vector(std::vector<int32_t>{0, -1, 3, 2}, {4});
  expect_error_containing([&] { kernels::cross_entropy_forward(logits, neg, kIgnore, losses, lse); },
                          {"target -1", "row 1"});
  Tensor d = Tensor::empty({4, 9});
  expect_error_containing([&] { kernels::cross_entropy_backward(logits, big, lse, kIgnore, 1.0f, d); },
                          {"cross_entropy_backward", "target 9", "row 2"});
  // A different ignore_index makes -1 legal.
  EXPECT_EQ(kernels::cross_entropy_forward(logits, neg, -1, losses, lse), 3);
  // Shape and device errors.
  Tensor short_t = Tensor::from_vector(std::vector<int32_t>{0, 1, 2}, {3});
  expect_error_containing([&] { kernels::cross_entropy_forward(logits, short_t, kIgnore, losses, lse); },
                          {"targets", "[3]", "[4, 9]"});
  Tensor lc = fake_cuda_tensor({4});
  expect_error_containing([&] { kernels::cross_entropy_forward(logits, big, kIgnore, lc, lse); },
                          {"cross_entropy_forward", "losses", "cuda:0", cuda_operand_on_cpu_error()});
}

TEST(CrossEntropy, NaNLogitsPropagate) {
  // A diverged model must show up as a NaN loss, never as a silently finite one.
  Tensor logits = random_tensor({2, 5}, 60);
  logits.data<float>()[7] = std::numeric_limits<float>::quiet_NaN();
  Tensor targets = Tensor::from_vector(std::vector<int32_t>{1, 1}, {2});
  Tensor losses = Tensor::empty({2}), lse = Tensor::empty({2});
  kernels::cross_entropy_forward(logits, targets, kIgnore, losses, lse);
  EXPECT_TRUE(std::isfinite(losses.item_at({0})));
  EXPECT_TRUE(std::isnan(losses.item_at({1})));
}
