// ParallelSpec's group-wise attention mask against PyTorch (python3-torch, float64): rows of real
// tokens followed by the [MASK] blocks of 2-3 anchors (k = 3 masks each), GQA heads, with and
// without document boundaries. tests/spec/torch_group_attention.py builds the boolean mask
// itself from the rule and runs softmax attention with autograd; the CPU kernel's output, lse
// and dq/dk/dv must match.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/attention.h"
#include "tests/spec/group_layout.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr int64_t kHq = 4, kHkv = 2, kD = 8, kMasks = 3;

void check_parity(const Tensor& groups, const Tensor& segments, const std::string& tag) {
  const int64_t B = groups.size(0), T = groups.size(1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kD));
  const Tensor q = random_tensor({B, T, kHq, kD}, 21, -2, 2), k = random_tensor({B, T, kHkv, kD}, 22, -2, 2);
  const Tensor v = random_tensor({B, T, kHkv, kD}, 23), dout = random_tensor({B, T, kHq, kD}, 24);
  const kernels::AttentionMask mask{0, segments, groups};
  Tensor out, lse, dq, dk, dv;
  kernels::attention_forward(q, k, v, scale, 0, out, lse, mask);
  kernels::attention_backward(dout, q, k, v, out, lse, scale, 0, dq, dk, dv, mask);

  const std::string dir = ::testing::TempDir();
  const std::string in_path = dir + "/group_attention_" + tag + "_in.anvt";
  const std::string out_path = dir + "/group_attention_" + tag + "_out.anvt";
  TensorMap inputs{{"q", q}, {"k", k}, {"v", v}, {"dout", dout}, {"groups", groups},
                   {"scale", Tensor::full({1}, scale)}};
  if (segments.defined()) inputs["segments"] = segments;
  write_tensor_file(in_path, inputs);
  run_torch_script("tests/spec/torch_group_attention.py", in_path + " " + out_path);
  const TensorMap ref = read_tensor_file(out_path);

  // f32 against float64 over 16 keys of 8 dims: a few f32 ulps of the largest value; 1e-5
  // fails on any wrongly seen or hidden key (those move results by O(1e-1)).
  EXPECT_LE(max_rel_diff(out, ref.at("out")), 1e-5) << tag << " out";
  EXPECT_LE(max_rel_diff(lse, ref.at("lse")), 1e-5) << tag << " lse";
  EXPECT_LE(max_rel_diff(dq, ref.at("dq")), 1e-5) << tag << " dq";
  EXPECT_LE(max_rel_diff(dk, ref.at("dk")), 1e-5) << tag << " dk";
  EXPECT_LE(max_rel_diff(dv, ref.at("dv")), 1e-5) << tag << " dv";

  // The oracle's mask hides mask keys from every real query and keeps a mask's own anchor.
  const Tensor& m = ref.at("mask");
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T; ++i) {
      const int32_t a = groups.data<int32_t>()[b * T + i];
      if (a >= 0) EXPECT_EQ(m.data<int32_t>()[(b * T + i) * T + a], 1) << tag << " row " << b << " mask " << i;
      for (int64_t j = 0; j < T; ++j)
        if (a < 0 && groups.data<int32_t>()[b * T + j] >= 0) EXPECT_EQ(m.data<int32_t>()[(b * T + i) * T + j], 0);
    }
}

}  // namespace

// Row 0: 7 real tokens, then the masks of anchors 0 (the first token), 3 and 5; row 1: 10 real
// tokens, then the masks of anchors 2 and 9.
TEST(GroupAttentionParity, MaskBlocksAfterTheRealTokensMatchTorch) {
  const Tensor groups = i32_rows({group_row({{7, {0, 3, 5}, kMasks}}), group_row({{10, {2, 9}, kMasks}})});
  check_parity(groups, Tensor(), "packed");
}

// Row 0 holds two documents, each its real tokens then its masks (anchors 0, 2 in the first;
// 11 in the second); row 1 one document as above. Masks of the second document see none of the first.
TEST(GroupAttentionParity, DocumentsAndMaskBlocksMatchTorch) {
  const std::vector<GroupRun> row0{{4, {0, 2}, kMasks}, {3, {11}, kMasks}};
  const Tensor groups = i32_rows({group_row(row0), group_row({{10, {2, 9}, kMasks}})});
  std::vector<int32_t> seg0(10, 0);
  seg0.insert(seg0.end(), 6, 1);
  const Tensor segments = i32_rows({seg0, std::vector<int32_t>(16, 0)});
  check_parity(groups, segments, "documents");
}
