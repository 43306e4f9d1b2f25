// kernels/attention: the blockwise CPU kernel against a naive full-matrix reference
// (explicit causal and sliding-window mask, softmax, analytic backward, all in double),
// against central finite differences, and for bitwise reproducibility.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "core/cuda_device.h"
#include "kernels/attention.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;
using anvil::kernels::attention_backward;
using anvil::kernels::attention_forward;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Case {
  const char* name;
  int64_t B, Tq, Tk, Hq, Hkv, D;
  bool fused;  // q/k/v carved out of one [B, Tk, (Hq + 2 Hkv) * D] buffer
  int64_t window = 0;  // sliding window (0 = none)
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

int64_t q_offset_of(const Case& c) { return c.Tk - c.Tq; }
float scale_of(const Case& c) { return 1.0f / std::sqrt(static_cast<float>(c.D)); }

struct Inputs {
  Tensor q, k, v;
};

Inputs make_inputs(const Case& c, uint32_t stream) {
  if (c.fused) {
    const int64_t heads = c.Hq + 2 * c.Hkv;
    Tensor buf = random_tensor({c.B, c.Tk, heads * c.D}, stream, -2.0f, 2.0f).view({c.B, c.Tk, heads, c.D});
    return {buf.slice(2, 0, c.Hq).slice(1, c.Tk - c.Tq, c.Tk), buf.slice(2, c.Hq, c.Hq + c.Hkv),
            buf.slice(2, c.Hq + c.Hkv, heads)};
  }
  return {random_tensor({c.B, c.Tq, c.Hq, c.D}, stream, -2.0f, 2.0f),
          random_tensor({c.B, c.Tk, c.Hkv, c.D}, stream + 1, -2.0f, 2.0f),
          random_tensor({c.B, c.Tk, c.Hkv, c.D}, stream + 2, -1.0f, 1.0f)};
}

// The textbook algorithm on the full T x T score matrix, in double.
struct Naive {
  std::vector<double> out, lse, dq, dk, dv;
};

Naive naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, double scale,
                      int64_t q_offset, int64_t window = 0) {
  const int64_t B = q.size(0), Tq = q.size(1), Hq = q.size(2), D = q.size(3), Tk = k.size(1), Hkv = k.size(2);
  const auto vq = q.to_vector(), vk = k.to_vector(), vv = v.to_vector();
  const std::vector<float> vg = dout.defined() ? dout.to_vector() : std::vector<float>();
  auto qi = [&](int64_t b, int64_t t, int64_t h) { return ((b * Tq + t) * Hq + h) * D; };
  auto ki = [&](int64_t b, int64_t t, int64_t h) { return ((b * Tk + t) * Hkv + h) * D; };
  Naive n;
  n.out.assign(vq.size(), 0.0);
  n.lse.assign(static_cast<size_t>(B * Hq * Tq), 0.0);
  n.dq.assign(vq.size(), 0.0);
  n.dk.assign(vk.size(), 0.0);
  n.dv.assign(vk.size(), 0.0);
  std::vector<double> s(static_cast<size_t>(Tk)), p(static_cast<size_t>(Tk)), dp(static_cast<size_t>(Tk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kh = h / (Hq / Hkv);
      for (int64_t i = 0; i < Tq; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < Tk; ++j) {
          const int64_t p = q_offset + i;
          const bool visible = j <= p && (window == 0 || j > p - window);  // causal, then the window
          double dotqk = 0;
          for (int64_t d = 0; d < D; ++d) dotqk += double(vq[qi(b, i, h) + d]) * vk[ki(b, j, kh) + d];
          s[j] = visible ? scale * dotqk : -INFINITY;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < Tk; ++j) sum += std::exp(s[j] - mx);
        n.lse[(b * Hq + h) * Tq + i] = mx + std::log(sum);
        for (int64_t j = 0; j < Tk; ++j) {
          p[j] = std::exp(s[j] - mx) / sum;
          for (int64_t d = 0; d < D; ++d) n.out[qi(b, i, h) + d] += p[j] * vv[ki(b, j, kh) + d];
        }
        if (vg.empty()) continue;
        double pdp = 0;
        for (int64_t j = 0; j < Tk; ++j) {
          dp[j] = 0;
          for (int64_t d = 0; d < D; ++d) dp[j] += double(vg[qi(b, i, h) + d]) * vv[ki(b, j, kh) + d];
          pdp += p[j] * dp[j];
        }
        for (int64_t j = 0; j < Tk; ++j) {
          const double ds = p[j] * (dp[j] - pdp);
          for (int64_t d = 0; d < D; ++d) {
            n.dv[ki(b, j, kh) + d] += p[j] * vg[qi(b, i, h) + d];
            n.dq[qi(b, i, h) + d] += scale * ds * vk[ki(b, j, kh) + d];
            n.dk[ki(b, j, kh) + d] += scale * ds * vq[qi(b, i, h) + d];
          }
        }
      }
    }
  return n;
}

// max|got - ref| / max|ref|, NaN anywhere counts as infinitely wrong.
double rel_err(const Tensor& got, const std::vector<double>& ref) {
  const auto g = got.to_vector();
  EXPECT_EQ(g.size(), ref.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < g.size() && i < ref.size(); ++i) {
    if (std::isnan(g[i])) return INFINITY;
    diff = std::max(diff, std::fabs(g[i] - ref[i]));
    scale = std::max(scale, std::fabs(ref[i]));
  }
  return scale == 0 ? diff : diff / scale;
}

bool all_nan(const Tensor& t) {
  for (float x : t.to_vector())
    if (!std::isnan(x)) return false;
  return true;
}

// Odd lengths, block-crossing lengths, head dims that are and are not vector multiples,
// GQA groups 1/2/4, B = 2, decoding offsets and fused strided views.
const Case kCases[] = {
    {"T1_D12", 1, 1, 1, 1, 1, 12, false},
    {"T67_D12_group2_B2", 2, 67, 67, 4, 2, 12, false},
    {"T130_D64_group4_B2", 2, 130, 130, 4, 1, 64, false},
    {"T130_D64_group1_fused", 2, 130, 130, 2, 2, 64, true},
    {"T67_D12_group2_fused", 1, 67, 67, 4, 2, 12, true},
    {"Tq67_Tk130_offset63_group2", 2, 67, 130, 4, 2, 12, false},
    {"Tq5_Tk130_offset125_fused", 1, 5, 130, 4, 1, 64, true},
    {"Tq1_Tk70_decode_group4", 2, 1, 70, 4, 1, 32, false},
    {"T100_D128_group2", 1, 100, 100, 2, 1, 128, false},
    {"T129_D96_group1", 1, 129, 129, 1, 1, 96, false},
    // Sliding windows: inside one block, across blocks, of one key, wider than the sequence, decoding.
    {"T67_D12_window5", 2, 67, 67, 4, 2, 12, false, 5},
    {"T200_D64_window70_fused", 1, 200, 200, 4, 2, 64, true, 70},
    {"T130_D12_window1", 1, 130, 130, 2, 1, 12, false, 1},
    {"T130_D12_window64_group4", 1, 130, 130, 4, 1, 12, false, 64},
    {"T40_D12_window100", 1, 40, 40, 2, 2, 12, false, 100},
    {"Tq67_Tk200_offset133_window90", 2, 67, 200, 4, 2, 12, false, 90},
    {"Tq1_Tk150_decode_window64", 2, 1, 150, 4, 1, 32, false, 64},
};

class AttentionShapes : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionShapes, ForwardMatchesNaive) {
  const Case c = GetParam();
  const Inputs in = make_inputs(c, 10);
  // out is a strided view (every other head of a wider buffer) that must be fully written
  // while the heads in between stay untouched.
  Tensor out_buf = Tensor::full({c.B, c.Tq, 2 * c.Hq, c.D}, kNaN);
  Tensor out = out_buf.as_strided({c.B, c.Tq, c.Hq, c.D},
                                  {out_buf.stride(0), out_buf.stride(1), 2 * c.D, 1}, 0);
  Tensor lse;
  attention_forward(in.q, in.k, in.v, scale_of(c), q_offset_of(c), out, lse, c.window);
  const Naive ref = naive_attention(in.q, in.k, in.v, Tensor(), scale_of(c), q_offset_of(c), c.window);
  EXPECT_LT(rel_err(out, ref.out), 1e-5);
  EXPECT_LT(rel_err(lse, ref.lse), 1e-6);
  EXPECT_TRUE(all_nan(out_buf.as_strided({c.B, c.Tq, c.Hq, c.D}, {out_buf.stride(0), out_buf.stride(1), 2 * c.D, 1},
                                         c.D)))
      << "attention_forward wrote outside its strided output view";
}

TEST_P(AttentionShapes, BackwardMatchesNaiveAnalytic) {
  const Case c = GetParam();
  const Inputs in = make_inputs(c, 20);
  Tensor out, lse;
  attention_forward(in.q, in.k, in.v, scale_of(c), q_offset_of(c), out, lse, c.window);
  const Tensor dout = random_tensor(out.shape(), 30);
  const Naive ref = naive_attention(in.q, in.k, in.v, dout, scale_of(c), q_offset_of(c), c.window);

  // Gradients land in strided views of one fused NaN-filled buffer: every element
  // must be assigned.
  Tensor dq, dk, dv;
  Tensor grad_buf = Tensor::full({c.B, c.Tk, c.Hq + 2 * c.Hkv, c.D}, kNaN);
  if (c.fused) {
    dq = grad_buf.slice(2, 0, c.Hq).slice(1, c.Tk - c.Tq, c.Tk);
    dk = grad_buf.slice(2, c.Hq, c.Hq + c.Hkv);
    dv = grad_buf.slice(2, c.Hq + c.Hkv, c.Hq + 2 * c.Hkv);
  }
  attention_backward(dout, in.q, in.k, in.v, out, lse, scale_of(c), q_offset_of(c), dq, dk, dv, c.window);
  EXPECT_LT(rel_err(dq, ref.dq), 1e-5);
  EXPECT_LT(rel_err(dk, ref.dk), 1e-5);
  EXPECT_LT(rel_err(dv, ref.dv), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Cases, AttentionShapes, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// Central differences of L = sum(out * r) on small shapes. eps = 1e-2 on O(1) inputs:
// truncation error O(eps^2) plus f32 rounding of L / eps keeps the error well below
// the stated 1e-2 relative tolerance.
void check_against_finite_differences(int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D, int64_t window = 0) {
  const int64_t q_offset = Tk - Tq;
  const float scale = 0.7f;
  Tensor q = random_tensor({1, Tq, Hq, D}, 40), k = random_tensor({1, Tk, Hkv, D}, 41);
  Tensor v = random_tensor({1, Tk, Hkv, D}, 42), r = random_tensor({1, Tq, Hq, D}, 43);
  auto loss = [&] {
    Tensor out, lse;
    attention_forward(q, k, v, scale, q_offset, out, lse, window);
    return dot(out, r);
  };
  Tensor out, lse, dq, dk, dv;
  attention_forward(q, k, v, scale, q_offset, out, lse, window);
  attention_backward(r, q, k, v, out, lse, scale, q_offset, dq, dk, dv, window);
  const double tol = 1e-2, eps = 1e-2;
  EXPECT_LT(max_rel_diff(dq, finite_difference_grad(q, loss, eps)), tol);
  EXPECT_LT(max_rel_diff(dk, finite_difference_grad(k, loss, eps)), tol);
  EXPECT_LT(max_rel_diff(dv, finite_difference_grad(v, loss, eps)), tol);
}

TEST(Attention, BackwardMatchesFiniteDifferences) { check_against_finite_differences(9, 9, 2, 1, 4); }

TEST(Attention, BackwardMatchesFiniteDifferencesWithOffset) { check_against_finite_differences(4, 9, 4, 2, 4); }

TEST(Attention, BackwardMatchesFiniteDifferencesWithWindow) { check_against_finite_differences(6, 11, 2, 1, 4, 3); }

// The window really masks: with window = 1 every query attends to itself alone, so out = its own v row.
TEST(Attention, WindowOfOneReturnsEachPositionsOwnValue) {
  const Tensor q = random_tensor({1, 70, 2, 8}, 70), k = random_tensor({1, 70, 1, 8}, 71);
  const Tensor v = random_tensor({1, 70, 1, 8}, 72);
  Tensor out, lse;
  attention_forward(q, k, v, 0.5f, 0, out, lse, 1);
  for (int64_t h = 0; h < 2; ++h) EXPECT_EQ(max_abs_diff(out.slice(2, h, h + 1), v), 0.0) << "head " << h;
}

TEST(Attention, BitwiseReproducibleAcrossRunsAndThreadCounts) {
  const Case c{"repro", 2, 130, 130, 4, 2, 64, true};
  const Inputs in = make_inputs(c, 50);
  const Tensor dout = random_tensor({c.B, c.Tq, c.Hq, c.D}, 51);
  auto run = [&] {
    Tensor out, lse, dq, dk, dv;
    attention_forward(in.q, in.k, in.v, scale_of(c), 0, out, lse);
    attention_backward(dout, in.q, in.k, in.v, out, lse, scale_of(c), 0, dq, dk, dv);
    std::vector<float> all;
    for (const Tensor* t : {&out, &lse, &dq, &dk, &dv}) {
      const auto x = t->to_vector();
      all.insert(all.end(), x.begin(), x.end());
    }
    return all;
  };
  const auto first = run(), second = run();
  ASSERT_EQ(first.size(), second.size());
  EXPECT_EQ(std::memcmp(first.data(), second.data(), first.size() * sizeof(float)), 0);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto serial = run();
  omp_set_num_threads(threads);
  EXPECT_EQ(std::memcmp(first.data(), serial.data(), first.size() * sizeof(float)), 0);
}

TEST(Attention, RejectsBadShapesWithClearMessages) {
  const Tensor q = random_tensor({1, 4, 3, 8}, 60), k = random_tensor({1, 4, 2, 8}, 61);
  Tensor out, lse;
  try {
    attention_forward(q, k, k, 1.0f, 0, out, lse);
    FAIL() << "Hq % Hkv != 0 accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("attention_forward"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Hq = 3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Hkv = 2"), std::string::npos) << msg;
  }
  const Tensor k1 = random_tensor({1, 4, 1, 6}, 62);
  EXPECT_THROW(attention_forward(q, k1, k1, 1.0f, 0, out, lse), Error);          // D differs
  const Tensor k2 = random_tensor({2, 4, 1, 8}, 63);
  EXPECT_THROW(attention_forward(q, k2, k2, 1.0f, 0, out, lse), Error);          // B differs
  const Tensor k3 = random_tensor({1, 4, 1, 8}, 64);
  EXPECT_THROW(attention_forward(q, k3, k3, 1.0f, 1, out, lse), Error);          // q_offset + Tq > Tk
  Tensor bad_lse = Tensor::empty({1, 4, 3});
  EXPECT_THROW(attention_forward(q, k3, k3, 1.0f, 0, out, bad_lse), Error);      // lse [B, Tq, Hq]
  Tensor good_out, good_lse, dq, dk, dv;
  attention_forward(q, k3, k3, 1.0f, 0, good_out, good_lse);
  EXPECT_THROW(attention_backward(good_out, q, k3, k3, good_out, bad_lse, 1.0f, 0, dq, dk, dv), Error);
  try {
    attention_forward(q, k3, k3, 1.0f, 0, out, lse, -2);
    FAIL() << "a negative window was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("window must be >= 0"), std::string::npos) << e.what();
  }
}

// A CUDA q goes to the CUDA backend when it is built (which checks that the device exists and
// that every tensor is on it); without the backend the CPU kernel names what is missing.
TEST(Attention, CudaTensorsGoToTheCudaBackendOrSayItIsMissing) {
  std::vector<float> host(1 * 4 * 1 * 8, 0.0f);
  const Tensor q = Tensor::from_external(host.data(), {1, 4, 1, 8}, DType::F32, Device::cuda());
  const Tensor hq = Tensor::from_external(host.data(), {1, 4, 1, 8}, DType::F32, Device::cpu());
  Tensor out, lse;
  const bool device = cuda_built() && cuda_device_count() > 0;
  const Tensor gq = device ? Tensor::zeros({1, 4, 1, 8}, DType::F32, Device::cuda()) : q;
  const char* expected = !cuda_built() ? "CUDA backend is not built" : device ? "one device" : "cuda:0 does not exist";
  try {
    attention_forward(gq, device ? hq : q, q, 1.0f, 0, out, lse);  // with a GPU: k on the CPU
    FAIL() << "the call was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("attention_forward"), std::string::npos) << e.what();
  }
}

}  // namespace
