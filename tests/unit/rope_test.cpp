// kernels/rope: tables and rotation against a naive double loop written from the
// Hugging Face Llama formula, backward against finite differences, and the
// forward/backward pair as a round trip.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/cuda_device.h"
#include "kernels/rope.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;
using anvil::kernels::rope_backward;
using anvil::kernels::rope_forward;
using anvil::kernels::rope_inv_freq;
using anvil::kernels::rope_tables;

namespace {

constexpr double kTheta = 10000.0;

struct Tables {
  Tensor cos, sin;
};

Tables make_tables(int64_t D, int64_t positions) {
  Tables t;
  rope_tables(rope_inv_freq(D, kTheta), positions, t.cos, t.sin);
  return t;
}

// HF Llama: x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1] and
// cos/sin repeated over both halves, all in double from the angle p * theta^(-2i/D).
std::vector<double> naive_rope(const Tensor& x, int64_t start_pos, double sign) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), half = D / 2;
  const auto v = x.to_vector();
  std::vector<double> out(v.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const size_t base = static_cast<size_t>(((b * T + t) * H + h) * D);
        for (int64_t d = 0; d < D; ++d) {
          const int64_t i = d % half;
          const double angle = sign * static_cast<double>(start_pos + t) * std::pow(kTheta, -2.0 * i / D);
          const double rotated = d < half ? -double(v[base + d + half]) : double(v[base + d - half]);
          out[base + d] = v[base + d] * std::cos(angle) + rotated * std::sin(angle);
        }
      }
  return out;
}

double max_abs_err(const Tensor& got, const std::vector<double>& ref) {
  const auto g = got.to_vector();
  EXPECT_EQ(g.size(), ref.size());
  double m = 0;
  for (size_t i = 0; i < g.size() && i < ref.size(); ++i) {
    if (std::isnan(g[i])) return INFINITY;
    m = std::max(m, std::fabs(g[i] - ref[i]));
  }
  return m;
}

TEST(Rope, InverseFrequenciesAndTablesMatchTheFormula) {
  const int64_t D = 12, P = 40;
  const auto inv = rope_inv_freq(D, kTheta);
  ASSERT_EQ(inv.size(), static_cast<size_t>(D / 2));
  for (int64_t i = 0; i < D / 2; ++i)
    EXPECT_NEAR(inv[i], std::pow(kTheta, -2.0 * i / D), 1e-7 * std::pow(kTheta, -2.0 * i / D)) << i;
  const Tables t = make_tables(D, P);
  ASSERT_EQ(t.cos.shape(), Shape({P, D / 2}));
  for (int64_t p = 0; p < P; ++p)
    for (int64_t i = 0; i < D / 2; ++i) {
      const double angle = static_cast<double>(p) * inv[i];
      EXPECT_NEAR(t.cos.item_at({p, i}), std::cos(angle), 1e-7);
      EXPECT_NEAR(t.sin.item_at({p, i}), std::sin(angle), 1e-7);
    }
}

TEST(Rope, ForwardMatchesNaiveOnStridedView) {
  // Odd T and H, start_pos > 0, and x a strided slice (the k heads of a fused qkv
  // buffer): the neighbouring heads must stay untouched.
  const int64_t B = 2, T = 7, H = 3, D = 16, start = 5;
  const Tables t = make_tables(D, start + T);
  Tensor fused = random_tensor({B, T, 3 * H, D}, 1, -2.0f, 2.0f);
  const auto before = fused.to_vector();
  Tensor x = fused.slice(2, H, 2 * H);
  const auto ref = naive_rope(x, start, 1.0);
  rope_forward(x, t.cos, t.sin, start);
  EXPECT_LT(max_abs_err(x, ref), 2e-6);
  const auto after = fused.to_vector();
  for (int64_t i = 0; i < static_cast<int64_t>(after.size()); ++i) {
    const int64_t head = (i / D) % (3 * H);
    if (head < H || head >= 2 * H) ASSERT_EQ(after[i], before[i]) << "element " << i << " outside the view changed";
  }
}

TEST(Rope, ForwardMatchesNaiveLargeParallel) {
  // Big enough to take the OpenMP path.
  const int64_t B = 3, T = 129, H = 5, D = 64, start = 17;
  const Tables t = make_tables(D, 200);
  Tensor x = random_tensor({B, T, H, D}, 2);
  const auto ref = naive_rope(x, start, 1.0);
  rope_forward(x, t.cos, t.sin, start);
  // Angles up to ~150 rad: f32 tables are exact to ~1e-7 absolute.
  EXPECT_LT(max_abs_err(x, ref), 2e-6);
}

TEST(Rope, BackwardMatchesFiniteDifferences) {
  const int64_t B = 1, T = 5, H = 3, D = 6, start = 3;
  const Tables t = make_tables(D, start + T);
  Tensor x = random_tensor({B, T, H, D}, 3), r = random_tensor({B, T, H, D}, 4);
  auto loss = [&] {
    Tensor y = x.clone();
    rope_forward(y, t.cos, t.sin, start);
    return dot(y, r);
  };
  Tensor dx = r.clone();
  rope_backward(dx, t.cos, t.sin, start);
  // The loss is linear in x, so central differences are exact up to f32 rounding.
  EXPECT_LT(max_rel_diff(dx, finite_difference_grad(x, loss, 1e-2)), 1e-4);
}

TEST(Rope, BackwardIsTheInverseRotation) {
  const int64_t B = 2, T = 33, H = 3, D = 10, start = 9;
  const Tables t = make_tables(D, 64);
  const Tensor x0 = random_tensor({B, T, H, D}, 5);
  Tensor x = x0.clone();
  rope_forward(x, t.cos, t.sin, start);
  EXPECT_GT(max_abs_diff(x, x0), 0.1);  // it did rotate
  EXPECT_LT(max_abs_err(x, naive_rope(x0, start, 1.0)), 2e-6);
  rope_backward(x, t.cos, t.sin, start);
  EXPECT_LT(max_abs_diff(x, x0), 2e-6);
  // Backward on its own is the rotation by -angle.
  Tensor y = x0.clone();
  rope_backward(y, t.cos, t.sin, start);
  EXPECT_LT(max_abs_err(y, naive_rope(x0, start, -1.0)), 2e-6);
}

TEST(Rope, RejectsPositionsBeyondTheTables) {
  const Tables t = make_tables(8, 10);
  Tensor x = random_tensor({1, 4, 1, 8}, 6);
  EXPECT_NO_THROW(rope_forward(x, t.cos, t.sin, 6));
  try {
    rope_forward(x, t.cos, t.sin, 7);
    FAIL() << "start_pos + T > table rows accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_positions"), std::string::npos) << e.what();
  }
  EXPECT_THROW(rope_backward(x, t.cos, t.sin, 7), Error);
  Tensor wrong_dim = random_tensor({1, 4, 1, 6}, 7);
  EXPECT_THROW(rope_forward(wrong_dim, t.cos, t.sin, 0), Error);
  EXPECT_THROW(rope_inv_freq(7, kTheta), Error);
  // A CUDA table with CPU activations: the call runs on the CPU and refuses it.
  std::vector<float> host(8, 0.0f);
  Tensor cos_on_gpu = Tensor::from_external(host.data(), {2, 4}, DType::F32, Device::cuda());
  Tensor x8 = random_tensor({1, 1, 1, 8}, 8);
  try {
    rope_forward(x8, cos_on_gpu, t.sin, 0);
    FAIL() << "a CUDA tensor was accepted by the CPU kernel";
  } catch (const Error& e) {
    const std::string want = cuda_built() ? "runs on the CPU" : "CUDA backend is not built";
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cos"), std::string::npos) << e.what();
  }
}

}  // namespace
