// The ep axis at 4 ranks, before any MoE layer exists: gradient groups reduce over their own
// communicators (a fake "expert" param split over ep sums over the dp ranks holding the same
// expert, a dense one over all of dp), the global norm counts every element once across
// groups, and a weight split over ep x tp is saved and read back through a checkpoint.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "parallel/data_parallel.h"
#include "parallel/grad_groups.h"
#include "parallel/grad_norm.h"
#include "tests/support/mpi_world.h"
#include "tests/support/reference.h"
#include "trainer/checkpoint.h"

using namespace anvil;
using anvil::testing::world;
namespace fs = std::filesystem;

namespace {

// Gradients every rank can also compute for any other rank: small multiples of 1/4, so
// every sum below is exact in f32.
float dense_grad(int rank, int64_t i) { return 0.25f * static_cast<float>((rank + 1) * (i + 1)); }
float expert_grad(int rank, int64_t j) {
  return 0.25f * static_cast<float>(rank + 1) + 0.5f * static_cast<float>(j) + 3.0f;
}

}  // namespace

// dp = 4, ep = 2: dp ranks {0, 1} and {2, 3} each hold experts {0 | 1} (ep ranks of one replica),
// so expert 0 lives on ranks 0 and 2 and its gradient sums over those two only.
TEST(GradGroups, EachGroupReducesOverItsOwnRanksAndTheNormCountsEveryElementOnce) {
  ASSERT_EQ(world()->size(), 4);
  const GridDims dims{4, 1, 1, 1, 2};
  ProcessGrid g(world(), dims);
  const int ep = g.rank(Axis::EP);
  for (int zero : {0, 2}) {
    Param dense("dense.w", Tensor::zeros({5}), ParamRole::Vector);
    Param expert("experts.w", Tensor::zeros({3, 2}), ParamRole::Matrix);  // [experts 6 over ep 2, 2]
    expert.shard = even_shard(Axis::EP, 0, {6}, ep, 2, expert.name);
    const std::vector<GradGroup> groups = grad_groups({&dense, &expert}, &g);
    ASSERT_EQ(groups.size(), 2u);
    EXPECT_EQ(groups[0].name, "dense");
    EXPECT_EQ(groups[0].params, std::vector<Param*>{&dense});
    EXPECT_EQ(groups[0].reduce, &g.data_sequence_comm());
    EXPECT_EQ(groups[0].across, nullptr);
    EXPECT_EQ(groups[1].name, "expert");
    EXPECT_EQ(groups[1].params, std::vector<Param*>{&expert});
    ASSERT_EQ(groups[1].reduce, &g.expert_data_sequence_comm());
    EXPECT_EQ(groups[1].reduce->size(), 2);
    EXPECT_EQ(groups[1].across, &g.comm(Axis::EP));

    DataParallelConfig dc;
    dc.zero_stage = zero;
    DataParallel dense_dp(groups[0].params, *groups[0].reduce, dc);
    DataParallel expert_dp(groups[1].params, *groups[1].reduce, dc);
    const int me = world()->rank();
    for (int64_t i = 0; i < 5; ++i) dense.grad.data<float>()[i] = dense_grad(me, i);
    for (int64_t j = 0; j < 6; ++j) expert.grad.data<float>()[j] = expert_grad(me, j);
    dense_dp.finish_grad_sync();
    expert_dp.finish_grad_sync();

    // The reference: dense sums over all 4 ranks; expert e sums over the ranks r with r % 2 == e.
    double want = 0;
    std::vector<double> dense_sum(5, 0.0), expert_sum[2] = {std::vector<double>(6, 0.0), std::vector<double>(6, 0.0)};
    for (int r = 0; r < 4; ++r) {
      for (int64_t i = 0; i < 5; ++i) dense_sum[i] += dense_grad(r, i);
      for (int64_t j = 0; j < 6; ++j) expert_sum[r % 2][j] += expert_grad(r, j);
    }
    for (double v : dense_sum) want += v * v;
    for (const auto& e : expert_sum)
      for (double v : e) want += v * v;
    want = std::sqrt(want);
    if (zero == 0) {
      for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(dense.grad.data<float>()[i], dense_sum[i]) << "dense " << i;
      for (int64_t j = 0; j < 6; ++j) EXPECT_EQ(expert.grad.data<float>()[j], expert_sum[ep][j]) << "expert " << j;
    }
    const std::vector<GradNormGroup> norm_groups{{&groups[0].params, &dense_dp, groups[0].across},
                                                 {&groups[1].params, &expert_dp, groups[1].across}};
    // ~12 squares of values < 20, accumulated at least in f32: relative error well under 1e-6.
    const double norm = grid_grad_norm(norm_groups, {});
    EXPECT_NEAR(norm, want, 1e-6 * want) << "zero " << zero;
    // Clipping scales both groups: the norm afterwards is the bound.
    EXPECT_NEAR(clip_grid_grad_norm(norm_groups, {}, {}, want / 2), want, 1e-6 * want);
    EXPECT_NEAR(grid_grad_norm(norm_groups, {}), want / 2, 1e-5 * want);
    // Leaving a param out of the count removes its elements, on every rank alike.
    double without_dense = 0;
    for (const auto& e : expert_sum)
      for (double v : e) without_dense += v * v / 4;  // clipped by 1/2 (to ~1e-6)
    EXPECT_NEAR(grid_grad_norm(norm_groups, {}, {&dense}), std::sqrt(without_dense), 1e-5 * want);
  }
}

// A weight [4, 8] split over ep (dim 0) and tp (dim 1, two runs 4|4) on dp = 2, tp = 2, ep = 2:
// each of the 4 distinct blocks is written once, the file holds the whole tensor, and every
// rank reads its own block back.
TEST(ExpertCheckpoint, MultiAxisShardsWriteAndReadBack) {
  ASSERT_EQ(world()->size(), 4);
  ProcessGrid g(world(), GridDims{2, 2, 1, 1, 2});
  Tensor full = Tensor::empty({4, 8});
  for (int64_t i = 0; i < full.numel(); ++i) full.data<float>()[i] = static_cast<float>(i) - 7.5f;
  Param w("experts.w", Tensor::zeros({2, 4}), ParamRole::Matrix);
  w.shard = even_shard(Axis::EP, 0, {4}, g.rank(Axis::EP), 2, w.name);
  w.shard.add(even_split(Axis::TP, 1, {4, 4}, g.rank(Axis::TP), 2, w.name));
  w.value.copy_(take_shard(w, full));

  Tensor id = Tensor::full({1}, world()->rank() == 0 ? static_cast<double>(getpid()) : 0.0, DType::I32);
  world()->all_reduce(id, ReduceOp::Sum);
  const std::string name = "anvil_expert_ckpt." + std::to_string(static_cast<int64_t>(id.item()));
  const std::string root = (fs::temp_directory_path() / name).string();
  CheckpointContents out;
  out.params.push_back({w.name, w.value, w.shard, writes_first_copy(g, w.shard)});
  CheckpointMeta meta;
  meta.step = 1;
  const std::string dir = save_checkpoint(root, meta, out, 0, world().get());

  CheckpointContents mine;
  Tensor back = Tensor::zeros({2, 4});
  mine.params.push_back({w.name, back, w.shard, true});
  load_checkpoint(dir, mine);
  EXPECT_EQ(anvil::testing::max_abs_diff(back, w.value), 0.0) << "this rank's ep x tp block";
  CheckpointContents whole;
  Tensor all = Tensor::zeros({4, 8});
  whole.params.push_back({w.name, all, ShardSpec{}, true});
  load_checkpoint(dir, whole);
  EXPECT_EQ(anvil::testing::max_abs_diff(all, full), 0.0) << "the file's whole tensor";
  world()->barrier();
  if (world()->rank() == 0) fs::remove_all(root);
}
