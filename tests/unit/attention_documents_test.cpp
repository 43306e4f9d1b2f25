// kernels/attention with document boundaries (packed rows) and rope at explicit positions:
// the blockwise CPU kernels against naive double-precision loops that build the block-diagonal
// causal (and windowed) mask element by element.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/attention.h"
#include "kernels/rope.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// Document lengths per row (they sum to T) -> i32 [B, T] segment ids.
Tensor segments(const std::vector<std::vector<int64_t>>& docs, int64_t T) {
  const int64_t B = static_cast<int64_t>(docs.size());
  Tensor seg = Tensor::empty({B, T}, DType::I32);
  int32_t* s = seg.data<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0, id = 0;
    for (int64_t len : docs[static_cast<size_t>(b)]) {
      for (int64_t i = 0; i < len; ++i) s[b * T + t++] = static_cast<int32_t>(id);
      ++id;
    }
    EXPECT_EQ(t, T) << "row " << b << " documents must fill the row";
  }
  return seg;
}

struct Naive {
  std::vector<double> out, lse, dq, dk, dv;
};

// Softmax attention over the explicit mask: key j visible to query slot p = q_offset + i iff
// j <= p, inside the window, and in p's document.
Naive naive(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, const Tensor& seg, double scale,
            int64_t q_offset, int64_t window) {
  const int64_t B = q.size(0), Tq = q.size(1), Hq = q.size(2), D = q.size(3), Tk = k.size(1), Hkv = k.size(2);
  const auto vq = q.to_vector(), vk = k.to_vector(), vv = v.to_vector(), vg = dout.to_vector();
  const int32_t* s = seg.data<int32_t>();
  auto qi = [&](int64_t b, int64_t t, int64_t h) { return ((b * Tq + t) * Hq + h) * D; };
  auto ki = [&](int64_t b, int64_t t, int64_t h) { return ((b * Tk + t) * Hkv + h) * D; };
  Naive n;
  n.out.assign(vq.size(), 0.0);
  n.dq.assign(vq.size(), 0.0);
  n.lse.assign(static_cast<size_t>(B * Hq * Tq), 0.0);
  n.dk.assign(vk.size(), 0.0);
  n.dv.assign(vk.size(), 0.0);
  std::vector<double> sc(Tk), p(Tk), dp(Tk);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kh = h / (Hq / Hkv);
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t pos = q_offset + i;
        double mx = -INFINITY;
        for (int64_t j = 0; j < Tk; ++j) {
          const bool vis = j <= pos && (window == 0 || j > pos - window) && s[b * Tk + j] == s[b * Tk + pos];
          double d = 0;
          for (int64_t c = 0; c < D; ++c) d += double(vq[qi(b, i, h) + c]) * vk[ki(b, j, kh) + c];
          sc[j] = vis ? scale * d : -INFINITY;
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < Tk; ++j) sum += std::exp(sc[j] - mx);
        n.lse[(b * Hq + h) * Tq + i] = mx + std::log(sum);
        double pdp = 0;
        for (int64_t j = 0; j < Tk; ++j) {
          p[j] = std::exp(sc[j] - mx) / sum;
          dp[j] = 0;
          for (int64_t c = 0; c < D; ++c) {
            n.out[qi(b, i, h) + c] += p[j] * vv[ki(b, j, kh) + c];
            dp[j] += double(vg[qi(b, i, h) + c]) * vv[ki(b, j, kh) + c];
          }
          pdp += p[j] * dp[j];
        }
        for (int64_t j = 0; j < Tk; ++j) {
          const double ds = p[j] * (dp[j] - pdp);
          for (int64_t c = 0; c < D; ++c) {
            n.dv[ki(b, j, kh) + c] += p[j] * vg[qi(b, i, h) + c];
            n.dq[qi(b, i, h) + c] += scale * ds * vk[ki(b, j, kh) + c];
            n.dk[ki(b, j, kh) + c] += scale * ds * vq[qi(b, i, h) + c];
          }
        }
      }
    }
  return n;
}

double rel_err(const Tensor& got, const std::vector<double>& ref) {
  const auto g = got.to_vector();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i])) return INFINITY;
    diff = std::max(diff, std::fabs(g[i] - ref[i]));
    scale = std::max(scale, std::fabs(ref[i]));
  }
  return scale == 0 ? diff : diff / scale;
}

struct DocCase {
  const char* name;
  int64_t Tq, Tk, Hq, Hkv, D, window;
  std::vector<std::vector<int64_t>> docs;  // per row, over the Tk key slots
};

// Documents spanning a whole row, length-1 documents, documents crossing the 64-slot blocks,
// GQA, windows inside and beyond a document, and decoding offsets (Tq < Tk).
const DocCase kDocCases[] = {
    {"whole_row_and_ones", 9, 9, 2, 1, 8, 0, {{9}, {1, 1, 1, 1, 1, 1, 1, 1, 1}}},
    {"mixed_group2", 67, 67, 4, 2, 12, 0, {{1, 30, 1, 35}, {67}}},
    {"block_crossing_group4", 150, 150, 4, 1, 16, 0, {{60, 10, 1, 79}, {1, 149}}},
    {"window_group2", 150, 150, 4, 2, 12, 20, {{70, 1, 79}, {5, 5, 140}}},
    {"window_wider_than_docs", 40, 40, 2, 1, 8, 100, {{13, 1, 26}, {40}}},
    {"decode_offset", 5, 130, 4, 2, 12, 0, {{64, 62, 4}, {128, 1, 1}}},
    {"decode_offset_window", 70, 200, 2, 1, 32, 30, {{150, 1, 49}, {10, 190}}},
};

class DocumentAttention : public ::testing::TestWithParam<DocCase> {};

// f32 blockwise online softmax vs double: relative error of a few f32 ulps times the
// reduction length (<= 200 keys), well below 1e-5.
TEST_P(DocumentAttention, ForwardAndBackwardMatchNaive) {
  const DocCase& c = GetParam();
  const int64_t B = static_cast<int64_t>(c.docs.size()), q_offset = c.Tk - c.Tq;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  const Tensor q = random_tensor({B, c.Tq, c.Hq, c.D}, 1, -2, 2), k = random_tensor({B, c.Tk, c.Hkv, c.D}, 2, -2, 2);
  const Tensor v = random_tensor({B, c.Tk, c.Hkv, c.D}, 3), dout = random_tensor({B, c.Tq, c.Hq, c.D}, 4);
  const Tensor seg = segments(c.docs, c.Tk);
  const kernels::AttentionMask mask{c.window, seg, Tensor()};
  Tensor out, lse, dq, dk, dv;
  kernels::attention_forward(q, k, v, scale, q_offset, out, lse, mask);
  kernels::attention_backward(dout, q, k, v, out, lse, scale, q_offset, dq, dk, dv, mask);
  const Naive ref = naive(q, k, v, dout, seg, scale, q_offset, c.window);
  EXPECT_LT(rel_err(out, ref.out), 1e-5);
  EXPECT_LT(rel_err(lse, ref.lse), 1e-5);
  EXPECT_LT(rel_err(dq, ref.dq), 1e-5);
  EXPECT_LT(rel_err(dk, ref.dk), 1e-5);
  EXPECT_LT(rel_err(dv, ref.dv), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Cases, DocumentAttention, ::testing::ValuesIn(kDocCases),
                         [](const ::testing::TestParamInfo<DocCase>& info) { return std::string(info.param.name); });

// A packed row equals its documents attended one by one (the independent check that nothing
// crosses a boundary, bit for bit: the kernel sees the same keys in the same blocks only when
// each document starts a row, so compare within f32 tolerance).
TEST(DocumentAttention, PackedRowEqualsSeparateDocuments) {
  const int64_t T = 90, H = 2, D = 8;
  const std::vector<int64_t> lens{20, 1, 69};
  const Tensor q = random_tensor({1, T, H, D}, 5), k = random_tensor({1, T, H, D}, 6), v = random_tensor({1, T, H, D}, 7);
  Tensor out, lse;
  kernels::attention_forward(q, k, v, 0.4f, 0, out, lse, kernels::AttentionMask{0, segments({lens}, T), Tensor()});
  int64_t start = 0;
  for (int64_t len : lens) {
    Tensor o, l;
    kernels::attention_forward(q.slice(1, start, start + len), k.slice(1, start, start + len),
                               v.slice(1, start, start + len), 0.4f, 0, o, l);
    EXPECT_LT(max_abs_diff(out.slice(1, start, start + len).contiguous(), o), 1e-6) << "document at " << start;
    start += len;
  }
}

TEST(DocumentAttention, NoSegmentsIsBitwiseTheWindowCall) {
  const Tensor q = random_tensor({2, 70, 4, 12}, 8), k = random_tensor({2, 70, 2, 12}, 9);
  const Tensor v = random_tensor({2, 70, 2, 12}, 10);
  Tensor a, la, b, lb;
  kernels::attention_forward(q, k, v, 0.3f, 0, a, la, 17);
  kernels::attention_forward(q, k, v, 0.3f, 0, b, lb, kernels::AttentionMask{17, Tensor(), Tensor()});
  EXPECT_EQ(max_abs_diff(a, b), 0.0);
  EXPECT_EQ(max_abs_diff(la, lb), 0.0);
}

TEST(DocumentAttention, RejectsBadSegmentsAndGroupMasks) {
  const Tensor q = random_tensor({1, 4, 1, 4}, 11);
  Tensor out, lse;
  Tensor bad = segments({{4}}, 4);
  bad.data<int32_t>()[2] = -1;  // decreasing: not contiguous documents
  EXPECT_NE(error_of([&] { kernels::attention_forward(q, q, q, 1.0f, 0, out, lse, {0, bad, Tensor()}); })
                .find("decrease at slot 2"),
            std::string::npos);
  EXPECT_NE(error_of([&] { kernels::attention_forward(q, q, q, 1.0f, 0, out, lse, {0, segments({{4}}, 4).view({4}), Tensor()}); })
                .find("segment_ids must be contiguous i32 [B, Tk]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { kernels::attention_forward(q, q, q, 1.0f, 0, out, lse, {0, Tensor(), segments({{4}}, 4)}); })
                .find("which is not before the mask"),
            std::string::npos);
}

// RoPE at explicit positions vs the rotation written out per element in double.
void naive_rope(std::vector<double>& x, const std::vector<int32_t>& pos, bool per_row, int64_t B, int64_t T, int64_t H,
                int64_t D, double theta, double sign) {
  const int64_t half = D / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double p = pos[static_cast<size_t>(per_row ? b * T + t : t)];
          const double f = static_cast<double>(static_cast<float>(std::pow(theta, -2.0 * i / D)));
          const double a = p * f, c = std::cos(a), s = sign * std::sin(a);
          double* e = &x[static_cast<size_t>(((b * T + t) * H + h) * D)];
          const double lo = e[i], hi = e[i + half];
          e[i] = lo * c - hi * s;
          e[i + half] = hi * c + lo * s;
        }
}

TEST(RopePositions, ForwardAndBackwardMatchNaiveAtExplicitPositions) {
  const int64_t B = 2, T = 7, H = 3, D = 8, P = 64;
  Tensor cos, sin;
  kernels::rope_tables(kernels::rope_inv_freq(D, 10000.0), P, cos, sin);
  const std::vector<int32_t> per_row{0, 1, 2, 0, 1, 0, 1, 5, 9, 3, 63, 3, 40, 0};  // restarts, gaps, repeats
  for (const bool rows : {true, false}) {
    const std::vector<int32_t> pos(per_row.begin(), per_row.begin() + (rows ? B * T : T));
    Tensor ids = Tensor::empty(rows ? Shape{B, T} : Shape{T}, DType::I32);
    std::copy(pos.begin(), pos.end(), ids.data<int32_t>());
    for (const double sign : {1.0, -1.0}) {
      Tensor x = random_tensor({B, T, H, D}, 12);
      const std::vector<float> x0 = x.to_vector();
      std::vector<double> ref(x0.begin(), x0.end());
      naive_rope(ref, pos, rows, B, T, H, D, 10000.0, sign);
      if (sign > 0) kernels::rope_forward(x, cos, sin, ids);
      else kernels::rope_backward(x, cos, sin, ids);
      // f32 tables (angles formed in double, rounded once) and one f32 rotation: a few ulps.
      EXPECT_LT(rel_err(x, ref), 1e-6) << (rows ? "[B, T]" : "[T]") << " sign " << sign;
    }
  }
}

TEST(RopePositions, ContiguousPositionIdsAreBitwiseTheStartPosForm) {
  Tensor cos, sin;
  kernels::rope_tables(kernels::rope_inv_freq(16, 500000.0), 40, cos, sin);
  Tensor a = random_tensor({2, 9, 2, 16}, 13), b = a.clone();
  Tensor ids = Tensor::empty({9}, DType::I32);
  for (int i = 0; i < 9; ++i) ids.data<int32_t>()[i] = 30 + i;
  kernels::rope_forward(a, cos, sin, 30);
  kernels::rope_forward(b, cos, sin, ids);
  EXPECT_EQ(max_abs_diff(a, b), 0.0);
}

TEST(RopePositions, RejectsPositionsOutsideTheTables) {
  Tensor cos, sin;
  kernels::rope_tables(kernels::rope_inv_freq(4, 10000.0), 8, cos, sin);
  Tensor x = random_tensor({1, 2, 1, 4}, 14);
  Tensor ids = Tensor::empty({2}, DType::I32);
  ids.data<int32_t>()[0] = 0;
  ids.data<int32_t>()[1] = 8;
  EXPECT_NE(error_of([&] { kernels::rope_forward(x, cos, sin, ids); }).find("position 8 at index 1"), std::string::npos);
}

}  // namespace
