// kernels/attention with drafting groups (AttentionMask::group_ids, ParallelSpec's group-wise
// training): the blockwise CPU kernels against naive double-precision loops over a dense mask
// built slot by slot from the rule (tests/spec/group_layout.h), with GQA, windows, documents,
// decoding offsets and layouts that cross the kernel's 64-slot blocks (so wholly masked blocks
// are skipped); the bad ids the kernel and check_step_context refuse; positions_from_groups.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <vector>

#include "kernels/attention.h"
#include "models/step_context.h"
#include "tests/spec/group_layout.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

struct Naive {
  std::vector<double> out, lse, dq, dk, dv;
};

// Softmax attention by loops over the dense mask: key j visible to query slot p = q_offset + i
// iff the group rule (causal included) holds, inside the window, and in p's document.
Naive naive(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, const Tensor& groups,
            const Tensor& seg, double scale, int64_t q_offset, int64_t window) {
  const int64_t B = q.size(0), Tq = q.size(1), Hq = q.size(2), D = q.size(3), Tk = k.size(1), Hkv = k.size(2);
  const auto vq = q.to_vector(), vk = k.to_vector(), vv = v.to_vector(), vg = dout.to_vector();
  std::vector<char> mask(static_cast<size_t>(B * Tq * Tk));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Tq; ++i)
      for (int64_t j = 0; j < Tk; ++j) {
        const int64_t p = q_offset + i;
        bool vis = group_rule_sees(groups.data<int32_t>() + b * Tk, p, j);
        if (window > 0 && j <= p - window) vis = false;
        if (seg.defined() && seg.data<int32_t>()[b * Tk + j] != seg.data<int32_t>()[b * Tk + p]) vis = false;
        mask[static_cast<size_t>((b * Tq + i) * Tk + j)] = vis;
      }
  auto qi = [&](int64_t b, int64_t t, int64_t h) { return ((b * Tq + t) * Hq + h) * D; };
  auto ki = [&](int64_t b, int64_t t, int64_t h) { return ((b * Tk + t) * Hkv + h) * D; };
  Naive n;
  n.out.assign(vq.size(), 0.0);
  n.dq.assign(vq.size(), 0.0);
  n.lse.assign(static_cast<size_t>(B * Hq * Tq), 0.0);
  n.dk.assign(vk.size(), 0.0);
  n.dv.assign(vk.size(), 0.0);
  std::vector<double> sc(Tk), pr(Tk), dp(Tk);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kh = h / (Hq / Hkv);
      for (int64_t i = 0; i < Tq; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < Tk; ++j) {
          double d = 0;
          for (int64_t c = 0; c < D; ++c) d += double(vq[qi(b, i, h) + c]) * vk[ki(b, j, kh) + c];
          sc[j] = mask[static_cast<size_t>((b * Tq + i) * Tk + j)] ? scale * d : -INFINITY;
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < Tk; ++j) sum += std::exp(sc[j] - mx);
        n.lse[(b * Hq + h) * Tq + i] = mx + std::log(sum);
        double pdp = 0;
        for (int64_t j = 0; j < Tk; ++j) {
          pr[j] = std::exp(sc[j] - mx) / sum;
          dp[j] = 0;
          for (int64_t c = 0; c < D; ++c) {
            n.out[qi(b, i, h) + c] += pr[j] * vv[ki(b, j, kh) + c];
            dp[j] += double(vg[qi(b, i, h) + c]) * vv[ki(b, j, kh) + c];
          }
          pdp += pr[j] * dp[j];
        }
        for (int64_t j = 0; j < Tk; ++j) {
          const double ds = pr[j] * (dp[j] - pdp);
          for (int64_t c = 0; c < D; ++c) {
            n.dv[ki(b, j, kh) + c] += pr[j] * vg[qi(b, i, h) + c];
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

struct GroupCase {
  const char* name;
  int64_t Tq, Hq, Hkv, D, window;  // Tq < the row length: the queries are the last Tq slots
  std::vector<std::vector<GroupRun>> rows;
  bool documents = false;  // each run of a row is a document of its own (segment_ids)
};

Tensor groups_of(const GroupCase& c) {
  std::vector<std::vector<int32_t>> rows;
  for (const auto& runs : c.rows) rows.push_back(group_row(runs));
  return i32_rows(rows);
}

Tensor segments_of(const GroupCase& c) {
  if (!c.documents) return Tensor();
  std::vector<std::vector<int32_t>> rows;
  for (const auto& runs : c.rows) {
    rows.emplace_back();
    for (size_t r = 0; r < runs.size(); ++r)
      rows.back().insert(rows.back().end(), static_cast<size_t>(group_row({runs[r]}).size()), static_cast<int32_t>(r));
  }
  return i32_rows(rows);
}

// 80 real tokens and 6 anchors x 20 masks (200 slots), and 110 real tokens and 3 anchors x 30:
// real-only query blocks meet mask-only key blocks (skipped), anchors at block edges (63, 64).
const std::vector<std::vector<GroupRun>> kLongRows{{{80, {0, 10, 40, 63, 64, 79}, 20}},
                                                    {{110, {5, 100, 109}, 30}}};

const GroupCase kCases[] = {
    {"anchor_first_token", 11, 2, 1, 8, 0, {{{5, {0, 2}, 3}}}},
    {"masks_after_each_anchor", 14, 4, 2, 8, 0, {{{3, {1, 2}, 2}, {4, {8}, 3}}, {{14, {}, 0}}}},
    // slot 64 (a key block of its own) is a real token after masks: it must see itself
    {"real_token_alone_in_a_block", 65, 2, 1, 8, 0, {{{60, {10}, 4}, {1, {}, 0}}}},
    {"blocks_gqa", 200, 4, 2, 12, 0, kLongRows},
    {"blocks_window", 200, 4, 1, 12, 30, kLongRows},
    {"decode_offset", 70, 4, 2, 12, 0, kLongRows},
    {"documents", 130, 4, 1, 16, 0, {{{40, {0, 39}, 12}, {30, {67, 93}, 18}}, {{100, {50, 99}, 15}, {0, {}, 0}}}, true},
    {"documents_window", 130, 2, 2, 8, 25, {{{40, {0, 39}, 12}, {30, {67, 93}, 18}}, {{100, {50, 99}, 15}, {0, {}, 0}}},
     true},
};

void PrintTo(const GroupCase& c, std::ostream* os) { *os << c.name; }

class GroupAttention : public ::testing::TestWithParam<GroupCase> {};

// f32 blockwise online softmax vs double: a few f32 ulps times the reduction length (<= 200
// keys) relative to the largest value, well below 1e-5.
TEST_P(GroupAttention, ForwardAndBackwardMatchNaive) {
  const GroupCase& c = GetParam();
  const Tensor groups = groups_of(c), seg = segments_of(c);
  const int64_t B = groups.size(0), Tk = groups.size(1), q_offset = Tk - c.Tq;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  const Tensor q = random_tensor({B, c.Tq, c.Hq, c.D}, 1, -2, 2), k = random_tensor({B, Tk, c.Hkv, c.D}, 2, -2, 2);
  const Tensor v = random_tensor({B, Tk, c.Hkv, c.D}, 3), dout = random_tensor({B, c.Tq, c.Hq, c.D}, 4);
  const kernels::AttentionMask mask{c.window, seg, groups};
  Tensor out, lse, dq, dk, dv;
  kernels::attention_forward(q, k, v, scale, q_offset, out, lse, mask);
  kernels::attention_backward(dout, q, k, v, out, lse, scale, q_offset, dq, dk, dv, mask);
  const Naive ref = naive(q, k, v, dout, groups, seg, scale, q_offset, c.window);
  EXPECT_LT(rel_err(out, ref.out), 1e-5);
  EXPECT_LT(rel_err(lse, ref.lse), 1e-5);
  EXPECT_LT(rel_err(dq, ref.dq), 1e-5);
  EXPECT_LT(rel_err(dk, ref.dk), 1e-5);
  EXPECT_LT(rel_err(dv, ref.dv), 1e-5);
  // The groups matter: the plain causal call gives another output.
  Tensor plain, plain_lse;
  kernels::attention_forward(q, k, v, scale, q_offset, plain, plain_lse, kernels::AttentionMask{c.window, seg, {}});
  EXPECT_GT(max_abs_diff(plain, out), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Cases, GroupAttention, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<GroupCase>& info) { return std::string(info.param.name); });

// Every token real: the group test passes every score and skips no block, so the result is bit
// for bit the call without group_ids.
TEST(GroupAttention, AllRealIsBitwiseThePlainCall) {
  const Tensor q = random_tensor({2, 150, 4, 12}, 8), k = random_tensor({2, 150, 2, 12}, 9);
  const Tensor v = random_tensor({2, 150, 2, 12}, 10), dout = random_tensor({2, 150, 4, 12}, 11);
  const Tensor real = Tensor::full({2, 150}, -1.0, DType::I32);
  Tensor a, la, b, lb, dqa, dka, dva, dqb, dkb, dvb;
  kernels::attention_forward(q, k, v, 0.3f, 0, a, la, 17);
  kernels::attention_forward(q, k, v, 0.3f, 0, b, lb, kernels::AttentionMask{17, Tensor(), real});
  EXPECT_EQ(max_abs_diff(a, b), 0.0);
  EXPECT_EQ(max_abs_diff(la, lb), 0.0);
  kernels::attention_backward(dout, q, k, v, a, la, 0.3f, 0, dqa, dka, dva, 17);
  kernels::attention_backward(dout, q, k, v, a, la, 0.3f, 0, dqb, dkb, dvb, kernels::AttentionMask{17, Tensor(), real});
  EXPECT_EQ(max_abs_diff(dqa, dqb), 0.0);
  EXPECT_EQ(max_abs_diff(dka, dkb), 0.0);
  EXPECT_EQ(max_abs_diff(dva, dvb), 0.0);
}

// Bad ids, each refused with its own message by the kernel and by check_step_context (host).
TEST(GroupAttention, RejectsBadGroupIds) {
  const Tensor q = random_tensor({1, 5, 1, 4}, 12);
  struct Bad {
    std::vector<int32_t> ids;
    const char* message;
  };
  const Bad bad[] = {
      {{-1, -1, 5, -1, -1}, "slot 2 is 5, outside [-1, 5)"},
      {{-1, -1, -2, -1, -1}, "slot 2 is -2, outside [-1, 5)"},
      {{-1, 0, 1, -1, -1}, "which is itself a mask"},           // anchor not a real token
      {{-1, -1, 3, -1, -1}, "which is not before the mask"},    // anchor after the mask
      {{-1, -1, 2, -1, -1}, "which is not before the mask"},    // a mask anchored on itself
  };
  for (const Bad& b : bad) {
    const Tensor ids = i32_rows({b.ids});
    Tensor out, lse;
    const std::string kernel = error_of([&] { kernels::attention_forward(q, q, q, 1.0f, 0, out, lse, {0, {}, ids}); });
    EXPECT_NE(kernel.find(b.message), std::string::npos) << kernel;
    EXPECT_NE(kernel.find("attention_forward"), std::string::npos) << kernel;
    StepContext ctx;
    ctx.mask.group_ids = ids;
    const std::string host = error_of([&] { check_step_context(ctx, 1, 5, 8, "make_step_context"); });
    EXPECT_NE(host.find(b.message), std::string::npos) << host;
    EXPECT_NE(host.find("make_step_context"), std::string::npos) << host;
  }
  Tensor out, lse;
  const Tensor short_row = Tensor::full({1, 4}, -1.0, DType::I32);
  EXPECT_NE(error_of([&] { kernels::attention_forward(q, q, q, 1.0f, 0, out, lse, {0, {}, short_row}); })
                .find("group_ids must be contiguous i32 [B, Tk] = [1, 5]"),
            std::string::npos);
  StepContext ctx;
  ctx.mask.group_ids = Tensor::full({1, 5}, -1.0);  // f32
  EXPECT_NE(error_of([&] { check_step_context(ctx, 1, 5, 8, "here"); }).find("group_ids must be i32 [1, 5]"),
            std::string::npos);
}

TEST(GroupAttention, PositionsFromGroups) {
  // Row 0: 4 real, 2 masks of anchor 1, 2 of anchor 3; row 1: a document of 3 real + 2 masks of
  // anchor 2, then a document of 3 real (restarting at 0).
  const Tensor groups = i32_rows({{-1, -1, -1, -1, 1, 1, 3, 3}, {-1, -1, -1, 2, 2, -1, -1, -1}});
  const Tensor seg = i32_rows({{0, 0, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 1, 1, 1}});
  const Tensor pos = positions_from_groups(groups, seg);
  const std::vector<int32_t> want{0, 1, 2, 3, 2, 3, 4, 5, 0, 1, 2, 3, 4, 0, 1, 2};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(pos.data<int32_t>()[i], want[i]) << "index " << i;
  EXPECT_NE(error_of([&] { positions_from_groups(i32_rows({{-1, 2, -1}})); }).find("not before the mask"),
            std::string::npos);
}

}  // namespace
