// Host linear algebra (eigh, QR, canonical null-space basis) and Newton–Schulz's fp64
// and bf16-emulation paths (kernels/newton_schulz.h): ALGORITHMS.md 2a's fp64 check.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/linalg.h"
#include "kernels/newton_schulz.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

std::vector<double> random_doubles(int64_t n, uint32_t stream) {
  std::vector<double> out;
  for (float f : random_tensor({n}, stream).to_vector()) out.push_back(f);
  return out;
}

std::vector<double> mul(const std::vector<double>& a, bool ta, const std::vector<double>& b, bool tb, int64_t M,
                        int64_t N, int64_t K) {
  std::vector<double> c(M * N);
  kernels::host_gemm<double>(ta, tb, M, N, K, 1.0, a.data(), ta ? M : K, b.data(), tb ? K : N, 0.0, c.data(), N);
  return c;
}

}  // namespace

TEST(Linalg, EighIsDescendingAndSolvesTheEigenproblem) {
  const auto g = random_doubles(30, 1);
  const auto a = mul(g, true, g, false, 6, 6, 5);  // 6x6 Gram of a 5x6 matrix: rank 5
  std::vector<double> evals(6), evecs(36);
  kernels::eigh_descending<double>(6, a.data(), evals.data(), evecs.data());
  for (int j = 0; j + 1 < 6; ++j) EXPECT_GE(evals[j], evals[j + 1]);
  EXPECT_NEAR(evals[5], 0.0, 1e-12);
  const auto av = mul(a, false, evecs, false, 6, 6, 6);
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j) EXPECT_NEAR(av[i * 6 + j], evals[j] * evecs[i * 6 + j], 1e-12);
}

TEST(Linalg, CanonicalNullSpaceBasisDoesNotDependOnTheInputBasis) {
  // A 7x7 Gram of rank 3: a 4-dim null space. Rotate the solver's null columns by a
  // random orthogonal 4x4; canonicalizing either basis must give the same columns.
  const auto g = random_doubles(21, 2);
  const auto a = mul(g, true, g, false, 7, 7, 3);
  std::vector<double> evals(7), q1(49);
  kernels::eigh_descending<double>(7, a.data(), evals.data(), q1.data());
  std::vector<double> rot = random_doubles(16, 3);
  kernels::qr_orthonormal<double>(4, 4, rot.data());
  std::vector<double> q2 = q1;
  for (int r = 0; r < 7; ++r)
    for (int j = 0; j < 4; ++j) {
      double acc = 0;
      for (int i = 0; i < 4; ++i) acc += q1[r * 7 + 3 + i] * rot[i * 4 + j];
      q2[r * 7 + 3 + j] = acc;
    }
  double moved = 0;
  for (int i = 0; i < 49; ++i) moved = std::max(moved, std::fabs(q1[i] - q2[i]));
  ASSERT_GT(moved, 0.1);  // the two inputs really are different bases
  const double tol = kernels::null_space_tolerance<float>(7);
  EXPECT_EQ(kernels::canonicalize_null_space<double>(7, evals.data(), q1.data(), tol), 4);
  EXPECT_EQ(kernels::canonicalize_null_space<double>(7, evals.data(), q2.data(), tol), 4);
  for (int i = 0; i < 49; ++i) EXPECT_NEAR(q1[i], q2[i], 1e-12);
  const auto qtq = mul(q1, true, q1, false, 7, 7, 7);  // still orthonormal
  for (int i = 0; i < 7; ++i)
    for (int j = 0; j < 7; ++j) EXPECT_NEAR(qtq[i * 7 + j], i == j ? 1.0 : 0.0, 1e-12);
  // An all-zero matrix has the identity as its canonical eigenbasis.
  std::vector<float> zero(16, 0.0f), ev(4), q(16);
  kernels::eigh_descending<float>(4, zero.data(), ev.data(), q.data());
  kernels::canonicalize_null_space<float>(4, ev.data(), q.data(), kernels::null_space_tolerance<float>(4));
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(q[i * 4 + j], i == j ? 1.0f : 0.0f, 1e-6);
}

TEST(NewtonSchulz, Fp64SingularValuesOfDiag) {
  // ALGORITHMS.md 2a: in fp64, NS5 of diag(1, 0.5, 0.1) has singular values [1.11874, 0.71196, 0.69884].
  std::vector<double> d = {1, 0, 0, 0, 0.5, 0, 0, 0, 0.1}, out(9);
  kernels::NewtonSchulzConfig cfg;
  cfg.bf16 = false;
  kernels::newton_schulz<double>(d.data(), out.data(), 3, 3, cfg);
  // The output stays diagonal; the notes list the set of singular values (sorted):
  // 1 -> 0.69884, 0.5 -> 1.11874, 0.1 -> 0.71196 (NS maps sizes non-monotonically).
  EXPECT_NEAR(out[0], 0.69884, 1e-5);
  EXPECT_NEAR(out[4], 1.11874, 1e-5);
  EXPECT_NEAR(out[8], 0.71196, 1e-5);
  EXPECT_NEAR(out[1], 0.0, 1e-15);
}

TEST(NewtonSchulz, TransposeCommutesAndBf16StaysCloseToFp64) {
  const int64_t r = 16, c = 24;
  const auto g = random_doubles(r * c, 4);
  std::vector<double> gt(r * c), o(r * c), ot(r * c);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) gt[j * r + i] = g[i * c + j];
  kernels::NewtonSchulzConfig f64;
  f64.bf16 = false;
  kernels::newton_schulz<double>(g.data(), o.data(), r, c, f64);
  kernels::newton_schulz<double>(gt.data(), ot.data(), c, r, f64);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) EXPECT_NEAR(ot[j * r + i], o[i * c + j], 1e-12);
  // bf16 emulation: every output is a bf16 value, and it drifts from fp64 by a few
  // bf16 ulps (ALGORITHMS.md: compare with a loose tolerance), not zero, not more.
  std::vector<float> gf(g.begin(), g.end()), of(r * c);
  kernels::NewtonSchulzConfig bf16;
  bf16.bf16 = true;
  kernels::newton_schulz<float>(gf.data(), of.data(), r, c, bf16);
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < r * c; ++i) {
    EXPECT_EQ(of[i], bf16_to_float(float_to_bf16(of[i])));
    max_diff = std::max(max_diff, std::fabs(of[i] - o[i]));
    max_ref = std::max(max_ref, std::fabs(o[i]));
  }
  EXPECT_GT(max_diff / max_ref, 1e-4);
  EXPECT_LT(max_diff / max_ref, 5e-2);
}

TEST(NewtonSchulz, Bf16TallIsBitwiseTheTransposedWideIteration) {
  // The tall case iterates on X^T X without transposing (as the fp32 path); under the
  // bf16 emulation it must still be the reference's transposed iteration bit for bit.
  const int64_t r = 40, c = 24;
  const auto g = random_doubles(r * c, 5);
  std::vector<float> tall(g.begin(), g.end()), wide(r * c), o_tall(r * c), o_wide(r * c);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) wide[j * r + i] = tall[i * c + j];
  for (bool coefficients : {false, true}) {
    kernels::NewtonSchulzConfig cfg;
    cfg.bf16 = true;
    cfg.bf16_coefficients = coefficients;
    kernels::newton_schulz<float>(tall.data(), o_tall.data(), r, c, cfg);
    kernels::newton_schulz<float>(wide.data(), o_wide.data(), c, r, cfg);
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j) ASSERT_EQ(o_tall[i * c + j], o_wide[j * r + i]) << i << "," << j;
  }
}
