// ParallelSpec's group-wise training rows (trainer/parallel_spec_rows.h) on a hand-worked case:
// ids, labels, group ids, positions and the target slot scoring each drafter slot, written out
// from ALGORITHMS.md §7 (mask i of anchor t: position t + i, label x_{t+1+i}); the anchor count;
// the per-row shift of the anchor grid.
#include <gtest/gtest.h>

#include "tests/support/reference.h"
#include "trainer/parallel_spec_rows.h"

using namespace anvil;

namespace {

std::vector<int32_t> row_of(const Tensor& t, int64_t b) {
  const int64_t T = t.size(t.dim() - 1);
  return std::vector<int32_t>(t.data<int32_t>() + b * T, t.data<int32_t>() + (b + 1) * T);
}

}  // namespace

TEST(ParallelSpecRows, AHandWorkedWindow) {
  // Two windows of n = 6 tokens; targets are the next tokens, the last one masked out (-100) in
  // row 1. k = 2 masks (ids 50, 51), a = 3 anchors: floor(j * 5 / 3) = 0, 1, 3.
  Batch w;
  w.ids = Tensor::from_vector(std::vector<int32_t>{10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 25}, {2, 6});
  w.targets = Tensor::from_vector(std::vector<int32_t>{11, 12, 13, 14, 15, 16, 21, 22, 23, 24, 25, -100}, {2, 6});
  const ParallelSpecRows r = parallel_spec_rows(w, 2, 3, 50, -100, /*shifted=*/false);
  ASSERT_EQ(r.drafter.ids.shape(), (Shape{2, 12}));
  EXPECT_EQ(row_of(r.drafter.ids, 0), (std::vector<int32_t>{10, 11, 12, 13, 14, 15, 50, 51, 50, 51, 50, 51}));
  // Mask i of anchor t predicts x_{t+1+i}: anchor 0 -> 12, 13; anchor 1 -> 13, 14; anchor 3 -> 15, 16.
  EXPECT_EQ(row_of(r.drafter.targets, 0), (std::vector<int32_t>{11, 12, 13, 14, 15, 16, 12, 13, 13, 14, 15, 16}));
  EXPECT_EQ(row_of(r.drafter.targets, 1), (std::vector<int32_t>{21, 22, 23, 24, 25, -100, 22, 23, 23, 24, 25, -100}));
  EXPECT_EQ(row_of(r.group_ids, 1), (std::vector<int32_t>{-1, -1, -1, -1, -1, -1, 0, 0, 1, 1, 3, 3}));
  EXPECT_EQ(row_of(r.drafter.position_ids, 1), (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 1, 2, 2, 3, 4, 5}));
  // The target's output at real slot t + i predicts the same token as mask i of anchor t.
  std::vector<int32_t> slots(r.teacher_slots.data<int32_t>(), r.teacher_slots.data<int32_t>() + 24);
  EXPECT_EQ(slots, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 7, 8, 8, 9, 10, 11}));
}

TEST(ParallelSpecRows, AnchorCountsAndLabelsPastTheWindow) {
  EXPECT_EQ(parallel_spec_anchor_count(32, 4, 0, 64), 8);   // (64 - 32) / 4
  EXPECT_EQ(parallel_spec_anchor_count(8, 2, 0, 64), 7);    // at most n - 1
  EXPECT_EQ(parallel_spec_anchor_count(32, 4, 5, 64), 5);
  EXPECT_NE(anvil::testing::error_of([] { parallel_spec_anchor_count(62, 4, 0, 64); }).find("not one anchor fits"),
            std::string::npos);
  EXPECT_NE(anvil::testing::error_of([] { parallel_spec_anchor_count(32, 4, 9, 64); }).find("<= 8"),
            std::string::npos);
  // Every anchor (a = n - 1): the last anchor's second mask drafts past the window and is ignored.
  Batch w;
  w.ids = Tensor::from_vector(std::vector<int32_t>{1, 2, 3, 4}, {1, 4});
  w.targets = Tensor::from_vector(std::vector<int32_t>{2, 3, 4, 5}, {1, 4});
  const ParallelSpecRows r = parallel_spec_rows(w, 2, 3, 9, -100);  // a = n - 1: any offset takes every slot
  EXPECT_EQ(row_of(r.group_ids, 0), (std::vector<int32_t>{-1, -1, -1, -1, 0, 0, 1, 1, 2, 2}));
  EXPECT_EQ(row_of(r.drafter.targets, 0), (std::vector<int32_t>{2, 3, 4, 5, 3, 4, 4, 5, 5, -100}));
  Batch packed = w;
  packed.segment_ids = Tensor::zeros({1, 4}, DType::I32);
  EXPECT_NE(anvil::testing::error_of([&] { parallel_spec_rows(packed, 2, 3, 9, -100); }).find("data.packing: none"),
            std::string::npos);
}

TEST(ParallelSpecRows, TheAnchorGridShiftsWithTheRowsContent) {
  // Anchors stay strictly increasing within 0 .. n - 2 for every offset; the offsets of different
  // rows differ, cover the whole range, and a row's offset depends on its tokens only.
  for (int64_t n : {2, 7, 32})
    for (int64_t a = 1; a < n; ++a)
      for (int64_t o = 0; o < n - 1; ++o) {
        int64_t before = -1;
        for (int64_t j = 0; j < a; ++j) {
          const int64_t t = parallel_spec_anchor(j, a, n, o);
          ASSERT_GT(t, before) << n << " " << a << " " << o;
          ASSERT_LE(t, n - 2) << n << " " << a << " " << o;
          before = t;
        }
      }
  std::vector<int> seen(31, 0);
  for (int32_t r = 0; r < 400; ++r) {
    std::vector<int32_t> row(32);
    for (int32_t j = 0; j < 32; ++j) row[j] = (r * 37 + j * 11) % 500;
    ++seen[parallel_spec_offset(row.data(), 32)];
  }
  for (int o = 0; o < 31; ++o) EXPECT_GT(seen[o], 0) << "offset " << o << " never drawn in 400 rows";
  Batch w;  // two rows with the same tokens get the same anchors, wherever they sit
  w.ids = Tensor::from_vector(std::vector<int32_t>{4, 8, 15, 16, 23, 42, 7, 4, 8, 15, 16, 23, 42, 7}, {2, 7});
  w.targets = w.ids.clone();
  const ParallelSpecRows r = parallel_spec_rows(w, 2, 2, 99, -100);
  EXPECT_EQ(row_of(r.group_ids, 0), row_of(r.group_ids, 1));
}
