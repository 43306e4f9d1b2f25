// DataParallel's buckets and ZeRO shards on synthetic params of awkward sizes (so
// buckets need padding at every dp), against sums each rank computes locally, and
// ShardedAdamW against the unsharded AdamW on the same reduced gradients. Runs at 1-4 ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "optim/adamw.h"
#include "optim/sharded_adamw.h"
#include "parallel/data_parallel.h"
#include "tests/support/mpi_world.h"

using namespace anvil;
using anvil::testing::world;

namespace {

// Params with sizes 7, 3x5, 13, 1, 2x50, 11 (registration order); roles vary for weight decay.
std::vector<std::unique_ptr<Param>> make_params() {
  std::vector<std::unique_ptr<Param>> ps;
  const std::vector<std::pair<Shape, ParamRole>> specs = {
      {{7}, ParamRole::Vector}, {{3, 5}, ParamRole::Matrix}, {{13}, ParamRole::Embedding},
      {{1}, ParamRole::Vector}, {{2, 50}, ParamRole::Matrix}, {{11}, ParamRole::Matrix}};
  for (size_t i = 0; i < specs.size(); ++i) {
    auto p = std::make_unique<Param>("p" + std::to_string(i), Tensor::empty(specs[i].first), specs[i].second);
    float* v = p->value.data<float>();
    for (int64_t j = 0; j < p->value.numel(); ++j) v[j] = 0.01f * static_cast<float>((i * 31 + j * 7) % 23) - 0.1f;
    ps.push_back(std::move(p));
  }
  return ps;
}
std::vector<Param*> raw(const std::vector<std::unique_ptr<Param>>& ps) {
  std::vector<Param*> out;
  for (const auto& p : ps) out.push_back(p.get());
  return out;
}
// Rank r's local gradient of element j of param i.
float local_grad(int r, size_t i, int64_t j) { return 0.25f * static_cast<float>((r + 1) * ((i + 3 * j) % 9)) - 1.0f; }
void fill_local_grads(const std::vector<Param*>& ps, int r) {
  for (size_t i = 0; i < ps.size(); ++i)
    for (int64_t j = 0; j < ps[i]->grad.numel(); ++j) ps[i]->grad.data<float>()[j] = local_grad(r, i, j);
}
double summed_grad(int P, size_t i, int64_t j) {
  double s = 0;
  for (int r = 0; r < P; ++r) s += local_grad(r, i, j);
  return s;
}
}  // namespace

TEST(GradSync, BucketsFollowBackwardOrderAndPadToDp) {
  auto w = world();
  auto owned = make_params();
  std::vector<Param*> ps = raw(owned);
  DataParallelConfig c;
  c.bucket_mb = 20 * 4 / 1e6;  // 20 floats: buckets [11, 100], [1, 13, 15], [7]
  DataParallel dp(ps, *w, c);
  ASSERT_GT(dp.buckets().size(), 2u);
  int64_t expected_begin = 0, numel = 0;
  for (const auto& b : dp.buckets()) {
    EXPECT_EQ(b.begin, expected_begin);
    EXPECT_EQ(b.padded % w->size(), 0);
    EXPECT_LT(b.padded - b.numel, w->size());
    expected_begin += b.padded;
    numel += b.numel;
  }
  EXPECT_EQ(numel, 7 + 15 + 13 + 1 + 100 + 11);
  // The last registered param comes first: backward finishes it first.
  EXPECT_EQ(dp.buckets().front().params.front(), ps.back());
  EXPECT_EQ(dp.flat_offset(ps.back()), 0);
  // Values survived the rebinding, and params are views of the flat buffer.
  auto fresh = make_params();
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(ps[i]->value.to_vector(), fresh[i]->value.to_vector());
    EXPECT_EQ(ps[i]->value.shape(), fresh[i]->value.shape());
  }
  // Every param element belongs to exactly one rank's shard.
  std::vector<int64_t> owned_count(ps.size(), 0);
  for (const auto& s : dp.segments()) owned_count[std::find(ps.begin(), ps.end(), s.param) - ps.begin()] += s.length;
  Tensor counts = Tensor::full({static_cast<int64_t>(ps.size())}, 0.0, DType::I64);
  for (size_t i = 0; i < ps.size(); ++i) counts.data<int64_t>()[i] = owned_count[i];
  w->all_reduce(counts, ReduceOp::Sum);
  for (size_t i = 0; i < ps.size(); ++i) EXPECT_EQ(counts.data<int64_t>()[i], ps[i]->value.numel()) << ps[i]->name;
}

class GradSyncStages : public ::testing::TestWithParam<int> {};

TEST_P(GradSyncStages, ReducedGradsNormAndClipMatchLocalSums) {
  auto w = world();
  const int P = w->size(), zero = GetParam();
  for (bool report : {true, false}) {  // with the backward hook, and with everything reduced at the end
    auto owned = make_params();
    std::vector<Param*> ps = raw(owned);
    DataParallelConfig c;
    c.bucket_mb = 20 * 4 / 1e6;
    c.zero_stage = zero;
    c.average = true;
    DataParallel dp(ps, *w, c);
    fill_local_grads(ps, w->rank());
    if (report) {
      dp.set_sync_enabled(true);
      for (size_t i = ps.size(); i-- > 0;) dp.grads_ready({ps[i]});  // backward order
    }
    dp.finish_grad_sync();
    double norm_sq = 0;
    for (size_t i = 0; i < ps.size(); ++i)
      for (int64_t j = 0; j < ps[i]->value.numel(); ++j) norm_sq += std::pow(summed_grad(P, i, j) / P, 2);
    // The reduced grads this rank can see: everything (ZeRO 0/1) or its shard's segments (ZeRO-2).
    for (const auto& s : dp.segments()) {
      const int64_t in_bucket = s.shard_offset - dp.buckets()[s.bucket].shard_base;
      const Tensor g = dp.shard_grad(s.bucket).slice(0, in_bucket, in_bucket + s.length);
      const size_t i = std::find(ps.begin(), ps.end(), s.param) - ps.begin();
      for (int64_t k = 0; k < s.length; ++k)
        EXPECT_NEAR(g.item_at({k}), summed_grad(P, i, s.param_offset + k) / P, 1e-6) << s.param->name;
    }
    if (zero < 2)
      for (size_t i = 0; i < ps.size(); ++i)
        for (int64_t j = 0; j < ps[i]->grad.numel(); ++j)
          EXPECT_NEAR(ps[i]->grad.data<float>()[j], summed_grad(P, i, j) / P, 1e-6);
    EXPECT_NEAR(dp.grad_norm(), std::sqrt(norm_sq), 1e-9 * std::sqrt(norm_sq));
    const double before = dp.clip_grad_norm(0.5 * std::sqrt(norm_sq));
    EXPECT_NEAR(before, std::sqrt(norm_sq), 1e-9 * before);
    EXPECT_NEAR(dp.grad_norm(), 0.5 * std::sqrt(norm_sq), 1e-5 * before);
  }
}

// ZeRO stages 1 and 2 only: stage 0 keeps the unsharded AdamW.
class ShardedAdamWStages : public ::testing::TestWithParam<int> {};

TEST_P(ShardedAdamWStages, ShardedAdamWMatchesAdamWAndGathersItsState) {
  const int zero = GetParam();
  auto w = world();
  const int P = w->size();
  AdamWConfig ac;
  ac.weight_decay = 0.1;
  ac.decay_vectors = false;
  // Reference: one process, AdamW on the averaged gradients.
  auto ref_owned = make_params();
  std::vector<Param*> ref = raw(ref_owned);
  AdamW adamw(ref, ac);
  auto owned = make_params();
  std::vector<Param*> ps = raw(owned);
  DataParallelConfig c;
  c.bucket_mb = 20 * 4 / 1e6;
  c.zero_stage = zero;
  c.average = true;
  DataParallel dp(ps, *w, c);
  ShardedAdamW sharded(dp, ac);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < ref.size(); ++i)
      for (int64_t j = 0; j < ref[i]->grad.numel(); ++j)
        ref[i]->grad.data<float>()[j] = static_cast<float>(summed_grad(P, i, j) / P) * (step + 1);
    adamw.step(1e-2);
    fill_local_grads(ps, w->rank());
    for (Param* p : ps)
      for (int64_t j = 0; j < p->grad.numel(); ++j) p->grad.data<float>()[j] *= static_cast<float>(step + 1);
    dp.finish_grad_sync();
    sharded.step(1e-2);
  }
  for (size_t i = 0; i < ps.size(); ++i) {
    const auto a = ps[i]->value.to_vector(), b = ref[i]->value.to_vector();
    for (size_t j = 0; j < a.size(); ++j) EXPECT_NEAR(a[j], b[j], 1e-6) << ps[i]->name << "[" << j << "]";
  }
  // Per rank: two moments for each element of its shard's params (padding holds none), and
  // over the ranks exactly AdamW's state.
  int64_t mine = 0;
  for (const DataParallel::Segment& seg : dp.segments()) mine += seg.length;
  EXPECT_EQ(sharded.state_bytes(), static_cast<size_t>(2 * mine * 4));
  EXPECT_EQ(all_reduce_sum(*w, static_cast<int64_t>(sharded.state_bytes())), static_cast<int64_t>(adamw.state_bytes()));
  // Gathered state: AdamW's names and shapes, AdamW's values.
  const auto full = sharded.state(), expect = adamw.state();
  ASSERT_EQ(full.size(), expect.size());
  for (size_t k = 0; k < full.size(); ++k) {
    EXPECT_EQ(full[k].name, expect[k].name);
    EXPECT_EQ(full[k].tensor.shape(), expect[k].tensor.shape());
    const auto a = full[k].tensor.to_vector(), b = expect[k].tensor.to_vector();
    for (size_t j = 0; j < a.size(); ++j) EXPECT_NEAR(a[j], b[j], 1e-6 * (1 + std::fabs(b[j]))) << full[k].name;
  }
  // load_state takes each rank's shard back out of full-shape tensors.
  ShardedAdamW reloaded(dp, ac);
  reloaded.load_state(full);
  const auto again = reloaded.state();
  for (size_t k = 0; k < full.size(); ++k) EXPECT_EQ(again[k].tensor.to_vector(), full[k].tensor.to_vector());
}

// Mixed precision (bf16 values, f32 masters; bf16 tensors live on the host too): the buckets
// shard and all-gather the f32 masters, which must follow AdamW's f32 run, and every rank's
// bf16 values must be its masters rounded to nearest even, gathered shards included.
TEST_P(ShardedAdamWStages, MixedPrecisionShardsTheMastersAndRoundsEveryValue) {
  const int zero = GetParam();
  auto w = world();
  const int P = w->size();
  AdamWConfig ac;
  ac.weight_decay = 0.1;
  auto ref_owned = make_params();
  std::vector<Param*> ref = raw(ref_owned);
  AdamW adamw(ref, ac);
  auto owned = make_params();
  std::vector<Param*> ps = raw(owned);
  move_params(ps, Device::cpu(), DType::BF16);
  DataParallelConfig c;
  c.bucket_mb = 20 * 4 / 1e6;
  c.zero_stage = zero;
  c.average = true;
  DataParallel dp(ps, *w, c);
  for (const Param* p : ps) ASSERT_TRUE(p->master.defined() && p->value.dtype() == DType::BF16) << p->name;
  ShardedAdamW sharded(dp, ac);
  for (int step = 0; step < 2; ++step) {
    for (size_t i = 0; i < ref.size(); ++i)
      for (int64_t j = 0; j < ref[i]->grad.numel(); ++j)
        ref[i]->grad.data<float>()[j] = static_cast<float>(summed_grad(P, i, j) / P);
    adamw.step(1e-2);
    fill_local_grads(ps, w->rank());
    dp.finish_grad_sync();
    sharded.step(1e-2);
  }
  for (size_t i = 0; i < ps.size(); ++i) {
    const auto m = ps[i]->master.to_vector(), r = ref[i]->value.to_vector();
    const Tensor v = ps[i]->value.contiguous();
    const uint16_t* bits = static_cast<const uint16_t*>(v.raw_data());
    for (size_t j = 0; j < m.size(); ++j) {
      EXPECT_NEAR(m[j], r[j], 1e-6) << ps[i]->name << "[" << j << "]";
      EXPECT_EQ(bits[j], float_to_bf16(m[j])) << ps[i]->name << "[" << j << "] on rank " << w->rank();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Zero, GradSyncStages, ::testing::Values(0, 1, 2));
INSTANTIATE_TEST_SUITE_P(Zero, ShardedAdamWStages, ::testing::Values(1, 2));
