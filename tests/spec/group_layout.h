// Test helper: drafting-group layouts of ParallelSpec's group-wise training (AttentionMask::
// group_ids) built from a description of each row, for the spec and GPU attention tests.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace anvil::testing {

// A run of slots in a row: `real` real tokens, then `masks` masks for each of `anchors` (slots
// in the row, counted from the row's start) in order.
struct GroupRun {
  int64_t real = 0;
  std::vector<int64_t> anchors;
  int64_t masks = 0;
};

// The group ids of runs laid out one after another along a row (-1 real, anchor slot for a mask).
inline std::vector<int32_t> group_row(const std::vector<GroupRun>& runs) {
  std::vector<int32_t> row;
  for (const GroupRun& r : runs) {
    row.insert(row.end(), static_cast<size_t>(r.real), -1);
    for (int64_t a : r.anchors) row.insert(row.end(), static_cast<size_t>(r.masks), static_cast<int32_t>(a));
  }
  return row;
}

// Rows of equal length -> i32 [B, T].
inline Tensor i32_rows(const std::vector<std::vector<int32_t>>& rows) {
  const int64_t B = static_cast<int64_t>(rows.size()), T = static_cast<int64_t>(rows.at(0).size());
  Tensor t = Tensor::empty({B, T}, DType::I32);
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_EQ(static_cast<int64_t>(rows[static_cast<size_t>(b)].size()), T) << "row " << b << " has another length";
    for (int64_t j = 0; j < T; ++j) t.data<int32_t>()[b * T + j] = rows[static_cast<size_t>(b)][static_cast<size_t>(j)];
  }
  return t;
}

// The group rule of kernels/attention.h written out case by case (the tests' reference): does
// the query at slot p see key slot j of a row with group ids g? Causality and the group rule only.
inline bool group_rule_sees(const int32_t* g, int64_t p, int64_t j) {
  if (j > p) return false;
  const bool real_query = g[p] == -1, real_key = g[j] == -1;
  if (real_query) return real_key;          // real tokens never see masks
  if (real_key) return j <= g[p];           // a mask sees the real tokens up to its anchor
  return g[j] == g[p];                      // and the masks of its own anchor (up to itself)
}

}  // namespace anvil::testing
