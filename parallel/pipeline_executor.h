// PipelineExecutor: runs one pipeline stage's action table (pipeline_schedule.h) for a step
// of M micro-batches on a PipelineStage (parallel/pipeline_stage.h), exchanging activations
// and their gradients with the neighbouring stages over the grid's pp communicator, and
// scoring the last stage's outputs with a PipelineLoss. It knows no model and no objective.
//
// Every rank of the pipeline runs the same number of micro-batches; a later stage asks its
// PipelineStage for the shape of what it receives (input_shape). Under tensor parallelism
// each tp rank of a stage exchanges with the rank of equal tp coordinate on the neighbouring
// stage (the pp communicator groups ranks with equal tp/sp/dp coordinates), so nothing
// changes here.
//
// Messages. Forward m on stage s sends its output to s+1 with tag 2m; backward m on s sends
// its input gradient to s-1 with tag 2m+1. Each tag is used once per step, so a message can
// only match the receive it is meant for.
//
// Why it cannot deadlock. Sends are non-blocking (isend; completed at the end of the step),
// so a stage blocks only in a receive, and only for an action's input: forward m on s
// waits for forward m on s-1, backward m on s for backward m on s+1. That is exactly the
// dependency graph simulate_pipeline runs; step() checks with it that the tables of every
// stage complete, so some stage can always run its next action. With blocking sends 1F1B
// would deadlock: in its steady state stage s sends forward m+1's activation while s+1 sends
// backward m's gradient to it, both waiting for a receive (rendezvous protocol for large
// messages).
//
// Side channel (PipelineStage::stat_count > 0). Forward m also sends the running sums of m's
// statistics to s+1 (tag 2M + 2m), after the activation; backward m receives the last stage's
// reduced totals from s+1 (tag 2M + 2m + 1) before the gradient and passes them on to s-1 at
// once, so they never wait on a stage's backward compute. The same dependencies as the
// activations and gradients: no new deadlock.
//
// Memory. The stage and the loss hold each micro-batch's saved state from its forward to
// its backward: GPipe holds M, 1F1B at most min(M, stages - stage) (peak_in_flight of the
// table; step() checks it and reports what it measured).
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/pipeline_schedule.h"
#include "parallel/pipeline_stage.h"

namespace anvil {

struct PipelineStepResult {
  // On every pp rank (broadcast from the last stage), each micro-batch's PipelineLoss::Value:
  // its reported loss and the weight that loss is a mean over, and the step's objective, the
  // sum of the micro-batches' objectives (whose gradient the step accumulated).
  std::vector<float> losses;
  std::vector<double> weights;
  double loss = 0;
  int peak_in_flight = 0;            // most micro-batches this stage held at once
  size_t peak_activation_bytes = 0;  // most bytes they held together (measured after each forward)
};

class PipelineExecutor {
 public:
  // pp: the grid's pipeline communicator (its rank is this stage, its size the stages); null
  // with one stage.
  PipelineExecutor(PipelineStage& stage, Communicator* pp, PipeSchedule schedule);

  // Called before each backward action with its micro-batch and whether it is this stage's
  // last backward of the step. Data parallelism: dp.set_sync_enabled(last), so only the
  // last backward's grad-ready reports start bucket reductions.
  using BeforeBackward = std::function<void(int micro_batch, bool last)>;
  void set_before_backward(BeforeBackward hook) { before_backward_ = std::move(hook); }

  // Runs this stage's table for micro-batches 0 .. M-1: gradients accumulate (+=) into the
  // stage's params (zero them before), PipelineStage::finish_backward runs after the last
  // backward, and the loss values are broadcast from the last stage. `loss` is called on the
  // last stage only. Collective over pp.
  PipelineStepResult step(int micro_batches, PipelineLoss& loss);

  // Forward only (evaluation): nothing is kept for backward and no gradient changes; the
  // values as in step (losses, weights; loss is their objectives' sum). Collective over pp.
  PipelineStepResult evaluate(int micro_batches, PipelineLoss& loss);

  int stage() const { return stage_; }
  int stages() const { return stages_; }

 private:
  // The side channel of forward m: receives the previous stages' sums, adds this stage's, and
  // sends them on (isend, into `sends`) or, on the last stage, reduces them through the loss.
  // Returns the running sums (the reduced totals on the last stage).
  std::vector<float> forward_stats(int m, int M, std::vector<std::unique_ptr<CommHandle>>& sends, PipelineLoss* loss);
  // The last stage's values, broadcast to every pp rank.
  void share_values(std::vector<PipelineLoss::Value>& values, PipelineStepResult& result) const;
  PipelineStage& stage_impl_;
  Communicator* pp_;
  PipeSchedule schedule_;
  int stage_, stages_;
  BeforeBackward before_backward_;
};

}  // namespace anvil
