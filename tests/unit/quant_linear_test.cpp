// LinearWeight with a quantized base (models/linear_weight.h set_quantized): the forward, the input
// gradient and merged() against a naive double-precision loop over the dequantized weight, with and
// without GPTQ act order (a column permutation), with a bias and an adapter; and the permutation
// ops themselves (kernels/quant.h permute_columns / unpermute_add_columns). The reference
// dequantizes through kernels::dequantize_rows, which quant_format_test checks against the §9
// vectors, and multiplies in double, so it shares no code with the fused products.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/rng.h"
#include "kernels/quant.h"
#include "models/linear_weight.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// A random permutation of [0, n) (a fixed shuffle).
Tensor random_perm(int64_t n, uint32_t seed) {
  std::vector<int32_t> p(n);
  std::iota(p.begin(), p.end(), 0);
  uint64_t s = seed * 2654435761u + 1;
  for (int64_t i = n - 1; i > 0; --i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    std::swap(p[i], p[(s >> 33) % (i + 1)]);
  }
  Tensor t = Tensor::empty({n}, DType::I32);
  std::copy(p.begin(), p.end(), t.data<int32_t>());
  return t;
}

// The dense weight in x's column order: Ŵ_ours dequantized, its column j moved to perm[j].
std::vector<double> dense_reference(const kernels::QuantizedWeight& q, const Tensor& perm) {
  Tensor d = Tensor::empty({q.out_features, q.in_features});
  kernels::dequantize_rows(q, 0, q.out_features, d);
  std::vector<double> w(q.out_features * q.in_features);
  for (int64_t o = 0; o < q.out_features; ++o)
    for (int64_t j = 0; j < q.in_features; ++j) {
      const int64_t col = perm.defined() ? perm.data<int32_t>()[j] : j;
      w[o * q.in_features + col] = d.data<float>()[o * q.in_features + j];
    }
  return w;
}

struct Case {
  const char* name;
  kernels::QuantScheme scheme;
  int64_t block;
  bool double_quant, act_order;
  int64_t rows;  // <= 8: the GEMV path; more: dequantized tiles
};

class QuantLinear : public ::testing::TestWithParam<Case> {};

TEST_P(QuantLinear, ForwardInputGradAndMergedMatchNaive) {
  const Case c = GetParam();
  const int64_t out = 24, in = 128;
  LinearWeight lw("layer", out, in, /*bias=*/true);
  const Tensor dense = random_tensor({out, in}, 11, -0.1f, 0.1f);
  const kernels::QuantizedWeight q = c.scheme == kernels::QuantScheme::NF4
                                         ? kernels::quantize_nf4(dense, c.double_quant, c.block, "test")
                                         : kernels::quantize_groupwise(dense, c.scheme, c.block, "test");
  const Tensor perm = c.act_order ? random_perm(in, 5) : Tensor();
  lw.set_quantized(q, perm);
  lw.bias().value = random_tensor({out}, 12);
  ASSERT_TRUE(lw.quantized());
  ASSERT_EQ(lw.out_features(), out);
  ASSERT_EQ(lw.in_features(), in);
  const std::vector<double> w = dense_reference(q, perm);

  const Tensor x = random_tensor({c.rows, in}, 13);
  const Tensor y = lw.forward(x);
  const Tensor dy = random_tensor({c.rows, out}, 14);
  const Tensor dx = lw.input_grad(dy);
  // f32 sums of `in` (or `out`) products of magnitude <= 0.1: a few ulps per term, relative to the largest output.
  const double tol = 8 * std::sqrt(static_cast<double>(in)) * 1.2e-7;
  double y_err = 0, y_max = 0, dx_err = 0, dx_max = 0;
  for (int64_t r = 0; r < c.rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double want = lw.bias().value.data<float>()[o];
      for (int64_t i = 0; i < in; ++i) want += static_cast<double>(x.data<float>()[r * in + i]) * w[o * in + i];
      y_err = std::max(y_err, std::fabs(y.data<float>()[r * out + o] - want));
      y_max = std::max(y_max, std::fabs(want));
    }
    for (int64_t i = 0; i < in; ++i) {
      double want = 0;
      for (int64_t o = 0; o < out; ++o) want += static_cast<double>(dy.data<float>()[r * out + o]) * w[o * in + i];
      dx_err = std::max(dx_err, std::fabs(dx.data<float>()[r * in + i] - want));
      dx_max = std::max(dx_max, std::fabs(want));
    }
  }
  EXPECT_LE(y_err / y_max, tol) << "forward";
  EXPECT_LE(dx_err / dx_max, tol) << "input gradient";
  // merged(): the dense weight in x's column order, exactly what dequantization gives.
  const Tensor m = lw.merged();
  for (int64_t e = 0; e < out * in; ++e) ASSERT_EQ(m.data<float>()[e], static_cast<float>(w[e])) << "merged " << e;
}

const Case kCases[] = {
    {"nf4_gemv", kernels::QuantScheme::NF4, 64, false, false, 3},
    {"nf4dq_actorder_tiles", kernels::QuantScheme::NF4, 64, true, true, 20},
    {"int4_actorder_gemv", kernels::QuantScheme::Int4, 32, false, true, 5},
    {"int4_tiles", kernels::QuantScheme::Int4, 32, false, false, 17},
    {"int2_actorder_tiles", kernels::QuantScheme::Int2, 64, false, true, 12},
};
INSTANTIATE_TEST_SUITE_P(Cases, QuantLinear, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

// The gathered columns and their adjoint: <permute(x), d> = <x, unpermute_add(d)>, exactly.
TEST(QuantPermute, GatherAndScatterAreAdjoint) {
  const Tensor perm = random_perm(40, 9);
  const Tensor x = random_tensor({3, 40}, 21);
  Tensor px = Tensor::empty({3, 40});
  kernels::permute_columns(x, perm, px);
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t j = 0; j < 40; ++j)
      ASSERT_EQ(px.data<float>()[r * 40 + j], x.data<float>()[r * 40 + perm.data<int32_t>()[j]]);
  Tensor back = Tensor::zeros({3, 40});
  kernels::unpermute_add_columns(px, perm, back);
  EXPECT_EQ(back.to_vector(), x.to_vector());  // scatter(gather(x)) = x for a permutation
}

TEST(QuantPermute, BadPermIsAClearError) {
  Tensor perm = random_perm(8, 1);
  perm.data<int32_t>()[3] = 8;
  const Tensor x = random_tensor({2, 8}, 2);
  Tensor out = Tensor::empty({2, 8});
  EXPECT_NE(error_of([&] { kernels::permute_columns(x, perm, out); }).find("perm[3] = 8"), std::string::npos);
  const Tensor short_perm = random_perm(6, 1);
  EXPECT_NE(error_of([&] { kernels::permute_columns(x, short_perm, out); }).find("6 entries for 8 columns"),
            std::string::npos);
}

TEST(QuantLinearErrors, ShapeTiedAndTwice) {
  LinearWeight lw("layer", 16, 64, false);
  const kernels::QuantizedWeight other = kernels::quantize_groupwise(random_tensor({16, 32}, 3), kernels::QuantScheme::Int4, 32, "t");
  EXPECT_NE(error_of([&] { lw.set_quantized(other); }).find("another model"), std::string::npos);
  const kernels::QuantizedWeight q = kernels::quantize_groupwise(random_tensor({16, 64}, 4), kernels::QuantScheme::Int4, 32, "t");
  Tensor bad_perm = Tensor::zeros({64}, DType::I64);
  EXPECT_NE(error_of([&] { lw.set_quantized(q, bad_perm); }).find("is not i32 [64]"), std::string::npos);
  lw.set_quantized(q);
  EXPECT_NE(error_of([&] { lw.set_quantized(q); }).find("quantized already"), std::string::npos);
  Param embedding("embed.weight", random_tensor({16, 64}, 5), ParamRole::Embedding);
  LinearWeight tied(embedding);
  EXPECT_NE(error_of([&] { tied.set_quantized(q); }).find("tied weight"), std::string::npos);
}

}  // namespace
