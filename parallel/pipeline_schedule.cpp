#include "parallel/pipeline_schedule.h"

#include <algorithm>

#include "core/error.h"

namespace anvil {

PipeSchedule parse_pipe_schedule(const std::string& name) {
  if (name == "gpipe") return PipeSchedule::GPipe;
  if (name == "1f1b") return PipeSchedule::OneFOneB;
  ANVIL_FAIL("pipeline schedule '", name, "' is unknown — use gpipe or 1f1b");
}

std::vector<PipeAction> pipeline_actions(PipeSchedule schedule, int stages, int stage, int micro_batches) {
  ANVIL_CHECK(stages >= 1 && stage >= 0 && stage < stages, "pipeline stage ", stage, " of ", stages, " is invalid");
  ANVIL_CHECK(micro_batches >= 1, "pipeline needs at least one micro-batch, got ", micro_batches);
  std::vector<PipeAction> actions;
  if (schedule == PipeSchedule::GPipe) {
    for (int m = 0; m < micro_batches; ++m) actions.push_back({PipeOp::Forward, m});
    for (int m = 0; m < micro_batches; ++m) actions.push_back({PipeOp::Backward, m});
    return actions;
  }
  // 1F1B: the later the stage, the sooner its first backward arrives.
  const int warmup = std::min(stages - stage - 1, micro_batches);
  int next_forward = 0, next_backward = 0;
  for (; next_forward < warmup; ++next_forward) actions.push_back({PipeOp::Forward, next_forward});
  while (next_forward < micro_batches) {
    actions.push_back({PipeOp::Forward, next_forward++});
    actions.push_back({PipeOp::Backward, next_backward++});
  }
  while (next_backward < micro_batches) actions.push_back({PipeOp::Backward, next_backward++});
  return actions;
}

int peak_in_flight(const std::vector<PipeAction>& actions) {
  int live = 0, peak = 0;
  for (const PipeAction& a : actions) {
    live += a.op == PipeOp::Forward ? 1 : -1;
    peak = std::max(peak, live);
  }
  return peak;
}

double simulate_pipeline(const std::vector<std::vector<PipeAction>>& tables, double forward_time,
                         double backward_time) {
  const int stages = static_cast<int>(tables.size());
  int micro_batches = 0;
  for (const auto& t : tables)
    for (const PipeAction& a : t) micro_batches = std::max(micro_batches, a.micro_batch + 1);
  // done[s][op][m]: finish time, or -1 while not run.
  std::vector<std::vector<double>> fwd(stages, std::vector<double>(micro_batches, -1)), bwd = fwd;
  std::vector<size_t> next(stages, 0);
  std::vector<double> clock(stages, 0);
  size_t remaining = 0;
  for (const auto& t : tables) remaining += t.size();
  while (remaining > 0) {
    bool progressed = false;
    for (int s = 0; s < stages; ++s) {
      if (next[s] == tables[s].size()) continue;
      const PipeAction& a = tables[s][next[s]];
      double ready;
      if (a.op == PipeOp::Forward) {
        ready = s == 0 ? 0 : fwd[s - 1][a.micro_batch];
      } else {
        const double upstream = s == stages - 1 ? fwd[s][a.micro_batch] : bwd[s + 1][a.micro_batch];
        ready = fwd[s][a.micro_batch] < 0 ? -1 : upstream;
      }
      if (ready < 0) continue;  // its input has not been produced yet
      const double finish = std::max(clock[s], ready) + (a.op == PipeOp::Forward ? forward_time : backward_time);
      (a.op == PipeOp::Forward ? fwd : bwd)[s][a.micro_batch] = finish;
      clock[s] = finish;
      ++next[s];
      --remaining;
      progressed = true;
    }
    ANVIL_CHECK(progressed, "pipeline schedule deadlocks: no stage can run its next action");
  }
  return *std::max_element(clock.begin(), clock.end());
}

}  // namespace anvil
