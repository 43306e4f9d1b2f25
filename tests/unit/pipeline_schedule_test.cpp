// Pipeline schedule tables: completeness, 1F1B's warm-up and memory bound, and a
// dependency simulation whose makespan matches the textbook (M + S - 1)(tf + tb).
#include <gtest/gtest.h>

#include <map>

#include "core/error.h"
#include "parallel/pipeline_schedule.h"

using namespace anvil;

TEST(PipelineSchedule, EveryMicroBatchForwardThenBackwardOnce) {
  for (PipeSchedule sched : {PipeSchedule::GPipe, PipeSchedule::OneFOneB})
    for (int stages : {1, 2, 4})
      for (int m : {1, 3, 4, 8})
        for (int s = 0; s < stages; ++s) {
          const auto actions = pipeline_actions(sched, stages, s, m);
          ASSERT_EQ(static_cast<int>(actions.size()), 2 * m);
          std::map<int, int> forward_at, backward_at;
          for (size_t i = 0; i < actions.size(); ++i)
            (actions[i].op == PipeOp::Forward ? forward_at : backward_at)[actions[i].micro_batch] = static_cast<int>(i);
          ASSERT_EQ(static_cast<int>(forward_at.size()), m);
          ASSERT_EQ(static_cast<int>(backward_at.size()), m);
          for (int mb = 0; mb < m; ++mb) EXPECT_LT(forward_at[mb], backward_at[mb]);
        }
}

TEST(PipelineSchedule, OneFOneBWarmupAndMemoryBound) {
  const int stages = 4, m = 8;
  for (int s = 0; s < stages; ++s) {
    const auto actions = pipeline_actions(PipeSchedule::OneFOneB, stages, s, m);
    int leading_forwards = 0;
    while (actions[leading_forwards].op == PipeOp::Forward) ++leading_forwards;
    EXPECT_EQ(leading_forwards, stages - s) << "stage " << s;  // warm-up plus the first steady forward
    EXPECT_EQ(peak_in_flight(actions), stages - s);
    EXPECT_EQ(peak_in_flight(pipeline_actions(PipeSchedule::GPipe, stages, s, m)), m);
  }
  // The last stage alternates strictly.
  const auto last = pipeline_actions(PipeSchedule::OneFOneB, stages, stages - 1, m);
  for (size_t i = 0; i < last.size(); ++i)
    EXPECT_EQ(last[i], (PipeAction{i % 2 ? PipeOp::Backward : PipeOp::Forward, static_cast<int>(i / 2)}));
}

TEST(PipelineSchedule, SimulationMatchesTheTextbookMakespan) {
  for (PipeSchedule sched : {PipeSchedule::GPipe, PipeSchedule::OneFOneB})
    for (int stages : {1, 2, 4})
      for (int m : {1, 4, 8}) {
        std::vector<std::vector<PipeAction>> tables;
        for (int s = 0; s < stages; ++s) tables.push_back(pipeline_actions(sched, stages, s, m));
        // Unit forward, double backward: the bubble is (S - 1)(tf + tb).
        EXPECT_DOUBLE_EQ(simulate_pipeline(tables, 1.0, 2.0), (m + stages - 1) * 3.0)
            << "stages " << stages << " micro-batches " << m;
      }
}

TEST(PipelineSchedule, DeadlocksAndBadInputAreErrors) {
  // Stage 1 wants backward 0 before it has run forward 0.
  std::vector<std::vector<PipeAction>> bad = {
      pipeline_actions(PipeSchedule::GPipe, 2, 0, 2),
      {{PipeOp::Backward, 0}, {PipeOp::Forward, 0}, {PipeOp::Forward, 1}, {PipeOp::Backward, 1}}};
  EXPECT_THROW(simulate_pipeline(bad, 1, 1), Error);
  EXPECT_THROW(pipeline_actions(PipeSchedule::GPipe, 2, 2, 4), Error);
  EXPECT_THROW(parse_pipe_schedule("interleaved"), Error);
  EXPECT_EQ(parse_pipe_schedule("1f1b"), PipeSchedule::OneFOneB);
}
