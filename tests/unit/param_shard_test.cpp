// core/param.h shard specs: single- and multi-axis take_shard / place_shard against a naive
// index map, logical shapes, and the errors for colliding splits and single-axis-only code.
#include <gtest/gtest.h>

#include <cmath>

#include "core/param.h"
#include "tests/support/reference.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing::max_abs_diff;

namespace {

// A [4, 6, 3] tensor whose every element is distinct (its flat index).
Tensor numbered() {
  Tensor t = Tensor::empty({4, 6, 3});
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(i);
  return t;
}

// The logical index of local element j along a dim split as `parts`, each evenly over `degree`
// ranks, on `rank` (naively: walk the parts, this rank's chunk of each in turn).
int64_t logical_index(const std::vector<int64_t>& parts, int rank, int degree, int64_t j) {
  int64_t base = 0;
  for (int64_t part : parts) {
    const int64_t chunk = part / degree;
    if (j < chunk) return base + rank * chunk + j;
    j -= chunk;
    base += part;
  }
  return -1;
}

}  // namespace

// An expert-like weight [experts=4, out=6, in=3] split over ep (2 ranks, dim 0) and tp
// (3 ranks, dim 1, as two parts 3|3 so each rank holds two runs): every rank's shard is the
// right elements, and placing every rank's shard back rebuilds the tensor exactly.
TEST(ShardSpec, MultiAxisTakeAndPlaceRoundTrip) {
  const Tensor full = numbered();
  const std::vector<int64_t> ep_parts{4}, tp_parts{3, 3};
  Tensor rebuilt = Tensor::full({4, 6, 3}, NAN);
  for (int e = 0; e < 2; ++e)
    for (int t = 0; t < 3; ++t) {
      Param p("experts.w", Tensor::zeros({2, 2, 3}), ParamRole::Matrix);
      p.shard = even_shard(Axis::EP, 0, ep_parts, e, 2, p.name);
      p.shard.add(even_split(Axis::TP, 1, tp_parts, t, 3, p.name));
      EXPECT_EQ(logical_shape(p), (Shape{4, 6, 3}));
      ASSERT_NE(p.shard.over(Axis::EP), nullptr);
      ASSERT_NE(p.shard.over(Axis::TP), nullptr);
      EXPECT_EQ(p.shard.over(Axis::DP), nullptr);
      EXPECT_EQ(p.shard.over(Axis::TP)->runs.size(), 2u);
      const Tensor local = take_shard(p, full);
      ASSERT_EQ(local.shape(), (Shape{2, 2, 3}));
      for (int64_t i = 0; i < 2; ++i)
        for (int64_t j = 0; j < 2; ++j)
          for (int64_t k = 0; k < 3; ++k) {
            const int64_t gi = logical_index(ep_parts, e, 2, i), gj = logical_index(tp_parts, t, 3, j);
            EXPECT_EQ(local.data<float>()[(i * 2 + j) * 3 + k], full.data<float>()[(gi * 6 + gj) * 3 + k])
                << "ep " << e << " tp " << t << " at " << i << "," << j << "," << k;
          }
      place_shard(p, local, rebuilt);
    }
  for (int64_t i = 0; i < full.numel(); ++i)
    ASSERT_EQ(rebuilt.data<float>()[i], full.data<float>()[i]) << "element " << i << " not placed exactly once";
}

// The single-axis helpers keep working: a plain tp split of dim 1 and a replicated param.
TEST(ShardSpec, SingleAxisAndReplicated) {
  const Tensor full = numbered();
  Tensor rebuilt = Tensor::full({4, 6, 3}, NAN);
  for (int t = 0; t < 2; ++t) {
    Param p("w", Tensor::zeros({4, 3, 3}), ParamRole::Matrix);
    p.shard = even_shard(Axis::TP, 1, {6}, t, 2, p.name);
    EXPECT_EQ(p.shard.single(p.name).runs.size(), 1u);
    EXPECT_EQ(logical_shape(p), (Shape{4, 6, 3}));
    const Tensor local = take_shard(p, full);
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < 3; ++j)
        EXPECT_EQ(local.data<float>()[(i * 3 + j) * 3], full.data<float>()[(i * 6 + t * 3 + j) * 3]);
    place_shard(p, local, rebuilt);
  }
  for (int64_t i = 0; i < full.numel(); ++i) ASSERT_EQ(rebuilt.data<float>()[i], full.data<float>()[i]);
  Param r("r", Tensor::zeros({4, 6, 3}), ParamRole::Vector);
  EXPECT_FALSE(r.shard.sharded());
  EXPECT_EQ(max_abs_diff(take_shard(r, full), full), 0.0);
}

TEST(ShardSpec, CollidingSplitsAndSingleAxisCodeFailClearly) {
  ShardSpec s = even_shard(Axis::EP, 0, {4}, 0, 2, "experts.w");
  const std::string same_dim = error_of([&] { s.add(even_split(Axis::TP, 0, {4}, 0, 2, "experts.w")); });
  EXPECT_NE(same_dim.find("a second split over tp on dim 0 collides with the split over ep on dim 0"),
            std::string::npos) << same_dim;
  const std::string same_axis = error_of([&] { s.add(even_split(Axis::EP, 1, {4}, 0, 2, "experts.w")); });
  EXPECT_NE(same_axis.find("collides"), std::string::npos) << same_axis;
  s.add(even_split(Axis::TP, 1, {6}, 0, 3, "experts.w"));
  const std::string multi = error_of([&] { s.single("experts.w"); });
  EXPECT_NE(multi.find("experts.w: expected a param split over one axis, but it is split over several axes"),
            std::string::npos) << multi;
  const std::string uneven = error_of([] { even_split(Axis::EP, 0, {5}, 0, 2, "experts.w"); });
  EXPECT_NE(uneven.find("experts.w: size 5 does not split evenly over 2 ep ranks"), std::string::npos) << uneven;
}

TEST(ParamRole, OutputHasItsName) {
  EXPECT_STREQ(param_role_name(ParamRole::Output), "output");
  EXPECT_STREQ(param_role_name(ParamRole::Embedding), "embedding");
}
