// The pipeline executor's side channel (parallel/pipeline_stage.h: stat_count, forward_stats,
// set_stat_totals, PipelineLoss::reduce_stats) on a toy stage that knows no model: each stage's
// statistics of micro-batch m are values no other stage or micro-batch has (stage s: {s + 1,
// 100 m + s, 0.5}), so a total that missed a stage, took another micro-batch's, or arrived late
// fails. The loss's reduce_stats all-reduces over data parallelism and doubles, so a stage that
// got the unreduced sums instead of the last stage's reduced totals fails too. Checked per stage
// before every backward (step, 1F1B and GPipe) and at the loss (step and evaluate) against sums
// written out here. Ranks: pp = world (2: pp2; 4: pp4), and at 4 ranks dp2 x pp2 as well.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <vector>

#include "parallel/grid.h"
#include "parallel/pipeline_executor.h"
#include "tests/support/mpi_world.h"

using namespace anvil;
using anvil::testing::world;

namespace {

constexpr int kStats = 3;

std::vector<float> own_stats(int stage, int m) {
  return {static_cast<float>(stage + 1), static_cast<float>(100 * m + stage), 0.5f};
}

// Expected totals of m after the loss's reduction: the sum over stages, over dp replicas whose
// statistics differ by replica (replica r adds 1000 r to the first), doubled.
std::vector<float> expected_totals(int stages, int replicas, int m) {
  std::vector<float> t(kStats, 0.0f);
  for (int r = 0; r < replicas; ++r)
    for (int s = 0; s < stages; ++s) {
      std::vector<float> own = own_stats(s, m);
      own[0] += 1000.0f * r;
      for (int i = 0; i < kStats; ++i) t[i] += own[i];
    }
  for (float& v : t) v *= 2.0f;
  return t;
}

class ToyStage : public PipelineStage {
 public:
  ToyStage(int stage, int replica) : stage_(stage), replica_(replica) {}
  Shape input_shape(int) const override { return {2}; }
  DType activation_dtype() const override { return DType::F32; }
  Device device() const override { return Device::cpu(); }
  Tensor forward(int, const Tensor& input, bool) override {
    return input.defined() ? input.clone() : Tensor::from_vector(std::vector<float>{1.0f, 2.0f}, {2});
  }
  Tensor backward(int, const Tensor& dy) override { return dy.defined() ? dy.clone() : Tensor(); }
  size_t saved_bytes() const override { return 0; }
  int stat_count() const override { return kStats; }
  std::vector<float> forward_stats(int m) const override {
    std::vector<float> s = own_stats(stage_, m);
    s[0] += 1000.0f * replica_;
    return s;
  }
  void set_stat_totals(int m, const std::vector<float>& totals) override { seen[m] = totals; }
  std::map<int, std::vector<float>> seen;  // set_stat_totals per micro-batch

 private:
  int stage_, replica_;
};

class ToyLoss : public PipelineLoss {
 public:
  explicit ToyLoss(Communicator* dp) : dp_(dp) {}
  Value forward(int m, const Tensor& output, bool) override {
    at_forward[m] = totals_[m];  // reduce_stats ran before forward(m)
    return {0.0f, 1.0, 0.0};
  }
  Tensor backward(int) override { return Tensor::from_vector(std::vector<float>{0.0f, 0.0f}, {2}); }
  std::vector<float> reduce_stats(int m, std::vector<float> totals) override {
    Tensor t = Tensor::from_vector(totals, {static_cast<int64_t>(totals.size())});
    if (dp_) dp_->all_reduce(t);
    totals = t.to_vector();
    for (float& v : totals) v *= 2.0f;
    totals_[m] = totals;
    return totals;
  }
  std::map<int, std::vector<float>> at_forward;

 private:
  Communicator* dp_;
  std::map<int, std::vector<float>> totals_;
};

void expect_totals(const std::map<int, std::vector<float>>& seen, int M, int stages, int replicas,
                   const std::string& where) {
  ASSERT_EQ(static_cast<int>(seen.size()), M) << where;
  for (int m = 0; m < M; ++m) {
    const std::vector<float> want = expected_totals(stages, replicas, m);
    ASSERT_EQ(seen.at(m).size(), want.size()) << where << " micro-batch " << m;
    for (int i = 0; i < kStats; ++i)
      EXPECT_EQ(seen.at(m)[i], want[i]) << where << " micro-batch " << m << " statistic " << i;  // exact: small sums
  }
}

void run_layout(int dp, const std::string& label) {
  const int n = world()->size();
  ProcessGrid grid(world(), GridDims{dp, 1, n / dp, 1});
  Communicator* pp = grid.size(Axis::PP) > 1 ? &grid.comm(Axis::PP) : nullptr;
  Communicator* dpc = grid.size(Axis::DP) > 1 ? &grid.comm(Axis::DP) : nullptr;
  const int stage = grid.rank(Axis::PP), stages = grid.size(Axis::PP);
  const bool last = stage == stages - 1;
  constexpr int M = 5;
  for (PipeSchedule schedule : {PipeSchedule::OneFOneB, PipeSchedule::GPipe}) {
    ToyStage toy(stage, grid.rank(Axis::DP));
    ToyLoss loss(dpc);
    PipelineExecutor executor(toy, pp, schedule);
    executor.step(M, loss);
    const std::string where = label + " stage " + std::to_string(stage);
    expect_totals(toy.seen, M, stages, dp, where + " before backward");
    if (last) expect_totals(loss.at_forward, M, stages, dp, where + " at the loss");

    ToyStage eval_toy(stage, grid.rank(Axis::DP));
    ToyLoss eval_loss(dpc);
    PipelineExecutor eval_executor(eval_toy, pp, schedule);
    eval_executor.evaluate(M, eval_loss);
    EXPECT_TRUE(eval_toy.seen.empty()) << where << ": evaluation sends nothing back";
    if (last) expect_totals(eval_loss.at_forward, M, stages, dp, where + " at the loss in evaluate");
  }
}

}  // namespace

TEST(PipelineSideChannel, EveryStageGetsTheReducedTotalsBeforeItsBackward) { run_layout(1, "pp"); }

TEST(PipelineSideChannel, TotalsReduceOverDataParallelOnTheLastStage) {
  ASSERT_EQ(world()->size() % 2, 0);
  run_layout(2, "dp2");
}
