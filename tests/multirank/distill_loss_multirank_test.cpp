// DistillationLoss under the grid against one process (every rank also computes the
// single-process result on the whole batch): tp = 2 with the vocabulary split (every
// divergence, with and without the top-k / top-p filters: loss, acceptance and the gathered
// gradient), and sp = 2 with the rows split (the group mean). Runs at 2 ranks.
#include <gtest/gtest.h>

#include <limits>

#include "models/distill_loss.h"
#include "parallel/tensor_parallel.h"
#include "tests/support/mpi_world.h"
#include "tests/support/reference.h"

using namespace anvil;
using anvil::testing::max_abs_diff;
using anvil::testing::random_ids;
using anvil::testing::random_tensor;
using anvil::testing::world;

namespace {

constexpr int64_t kN = 10, kV = 64;

struct Inputs {
  Tensor student, teacher, targets;
};
Inputs inputs() {
  Inputs in{random_tensor({kN, kV}, 61, -3.0f, 3.0f), random_tensor({kN, kV}, 62, -3.0f, 3.0f),
            random_ids({kN}, static_cast<int32_t>(kV), 63)};
  in.targets.data<int32_t>()[3] = -100;
  for (int64_t j = 0; j < kV; ++j) in.teacher.data<float>()[7 * kV + j] += 60.0f;  // a row far from 0
  return in;
}

struct LossRun {
  DistillationLoss::Result result;
  Tensor grad;
};
LossRun run(const DistillSpec& spec, Communicator* tp, Communicator* sp, const Tensor& student, const Tensor& teacher,
        const Tensor& targets, int64_t vocab_start) {
  DistillationLoss loss(spec, tp, vocab_start, kV, sp);
  Cache c;
  LossRun r;
  r.grad = student.clone();
  r.result = loss.forward(r.grad, teacher, targets, c);
  loss.backward(c, 3.0f);
  return r;
}

// f32: the shards' partial sums are combined in another order than one row's sum (up to V ulps
// of the O(1) total), and the log-probabilities carry a few ulps of |z| / T (|z| <= 3 + the offset
// row's, which the normaliser cancels).
double tolerance(double temperature) {
  return std::numeric_limits<float>::epsilon() * (kV + 8.0 * (1.0 + 3.0 / temperature));
}

std::vector<DistillSpec> specs() {
  std::vector<DistillSpec> out;
  for (DivergenceKind k : {DivergenceKind::ForwardKL, DivergenceKind::ReverseKL, DivergenceKind::TVD,
                           DivergenceKind::JSD}) {
    out.push_back({k, 0.8, 0, 1.0});
    if (k != DivergenceKind::ReverseKL) out.push_back({k, 1.3, 9, 0.85});
  }
  // top-k 1: one shard of every row keeps nothing of p (its statistics are -inf and 0).
  out.push_back({DivergenceKind::ForwardKL, 1.0, 1, 1.0});
  out.push_back({DivergenceKind::TVD, 0.5, 1, 1.0});
  return out;
}

std::string name_of(const DistillSpec& s) {
  return divergence_name(s.kind) + " T=" + std::to_string(s.temperature) + " top_k=" + std::to_string(s.top_k) +
         " top_p=" + std::to_string(s.top_p);
}

}  // namespace

TEST(DistillLossMultirank, Tp2MatchesOneProcess) {
  ASSERT_EQ(world()->size(), 2);
  Communicator* tp = world().get();
  const int r = tp->rank();
  const int64_t Vs = kV / 2;
  const Inputs in = inputs();
  for (const DistillSpec& spec : specs()) {
    const LossRun ref = run(spec, nullptr, nullptr, in.student, in.teacher, in.targets, 0);
    const Tensor student = in.student.slice(1, r * Vs, (r + 1) * Vs).contiguous();
    const Tensor teacher = in.teacher.slice(1, r * Vs, (r + 1) * Vs).contiguous();
    const LossRun got = run(spec, tp, nullptr, student, teacher, in.targets, vocab_shard_start(tp, kV));
    const double tol = tolerance(spec.temperature);
    EXPECT_EQ(got.result.tokens, ref.result.tokens) << name_of(spec);
    EXPECT_NEAR(got.result.loss, ref.result.loss, tol) << name_of(spec);
    EXPECT_NEAR(got.result.acceptance_sum, ref.result.acceptance_sum, kN * tol) << name_of(spec);
    EXPECT_GT(ref.result.loss, 0.01f) << name_of(spec);
    const Tensor gathered = GatherFromTensorParallelRegion::forward(tp, got.grad);
    EXPECT_LE(max_abs_diff(gathered, ref.grad), tol) << name_of(spec);
  }
}

TEST(DistillLossMultirank, Sp2TakesTheGroupMean) {
  ASSERT_EQ(world()->size(), 2);
  Communicator* sp = world().get();
  const int r = sp->rank();
  const int64_t rows = kN / 2;
  const Inputs in = inputs();
  for (const DistillSpec& spec : specs()) {
    const LossRun ref = run(spec, nullptr, nullptr, in.student, in.teacher, in.targets, 0);
    const Tensor student = in.student.slice(0, r * rows, (r + 1) * rows).contiguous();
    const Tensor teacher = in.teacher.slice(0, r * rows, (r + 1) * rows).contiguous();
    const Tensor targets = in.targets.slice(0, r * rows, (r + 1) * rows).contiguous();
    const LossRun got = run(spec, nullptr, sp, student, teacher, targets, 0);
    const double tol = tolerance(spec.temperature);
    EXPECT_EQ(got.result.tokens, ref.result.tokens) << name_of(spec);
    EXPECT_NEAR(got.result.loss, ref.result.loss, tol) << name_of(spec);
    EXPECT_NEAR(got.result.acceptance_sum, ref.result.acceptance_sum, kN * tol) << name_of(spec);
    // backward divides by the group's token count: this rank's rows of the one-process gradient.
    EXPECT_LE(max_abs_diff(got.grad, ref.grad.slice(0, r * rows, (r + 1) * rows).contiguous()), tol)
        << name_of(spec);
  }
}
