// Pipeline schedules as plain tables: for each stage, the ordered list of
// (forward | backward, micro-batch) actions one executor runs, exchanging
// activations and gradients with the neighbouring stages by send/recv.
//   GPipe: all forwards, then all backwards (in-flight activations: M).
//   1F1B:  warm-up of (stages - stage - 1) forwards, then alternate one forward
//          and one backward, then drain (in-flight activations <= stages - stage).
#pragma once
#include <string>
#include <vector>

namespace anvil {

enum class PipeOp { Forward, Backward };

struct PipeAction {
  PipeOp op;
  int micro_batch;
  bool operator==(const PipeAction& o) const { return op == o.op && micro_batch == o.micro_batch; }
};

enum class PipeSchedule { GPipe, OneFOneB };
PipeSchedule parse_pipe_schedule(const std::string& name);  // "gpipe" | "1f1b"; throws listing both

std::vector<PipeAction> pipeline_actions(PipeSchedule schedule, int stages, int stage, int micro_batches);

// The most micro-batches whose activations a stage holds at once under its actions.
int peak_in_flight(const std::vector<PipeAction>& actions);

// Runs every stage's table against the dependencies (forward m on stage s needs
// forward m on s-1; backward m on s needs backward m on s+1 and its own forward m),
// each action taking `forward_time` / `backward_time`, stages working in parallel but
// each in its own table's order. Returns the makespan; throws if the tables deadlock.
double simulate_pipeline(const std::vector<std::vector<PipeAction>>& tables, double forward_time,
                         double backward_time);

}  // namespace anvil
