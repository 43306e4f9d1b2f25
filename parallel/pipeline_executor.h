// PipelineExecutor: runs one pipeline stage's action table (pipeline_schedule.h) for a step
// of M micro-batches on a stage-partitioned TransformerLM, exchanging activations and their
// gradients with the neighbouring stages over the grid's pp communicator.
//
// Every rank of the pipeline calls step() with the same micro-batches (ids and targets): the
// first stage embeds the ids, the last scores the targets, and every stage takes their
// [B, T] shape to size the messages it receives. Under tensor parallelism each tp rank of a
// stage exchanges with the rank of equal tp coordinate on the neighbouring stage (the pp
// communicator groups ranks with equal tp/sp/dp coordinates), so nothing changes here.
//
// Messages. Forward m on stage s sends its output to s+1 with tag 2m; backward m on s sends
// its input gradient to s-1 with tag 2m+1. Each tag is used once per step, so a message can
// only match the receive it is meant for.
//
// Why it cannot deadlock. Sends are non-blocking (isend; completed at the end of the step),
// so a stage blocks only in a receive, and only for an action's input: forward m on s
// waits for forward m on s-1, backward m on s for backward m on s+1. That is exactly the
// dependency graph simulate_pipeline runs; the constructor checks with it that the tables
// of every stage complete, so some stage can always run its next action. With blocking
// sends 1F1B would deadlock: in its steady state stage s sends forward m+1's activation
// while s+1 sends backward m's gradient to it, both waiting for a receive (rendezvous
// protocol for large messages).
//
// Memory. One Cache per micro-batch in flight, created by its forward and dropped after its
// backward: GPipe holds M, 1F1B at most min(M, stages - stage) (peak_in_flight of the
// table; step() checks it and reports what it measured).
#pragma once
#include <functional>
#include <vector>

#include "models/transformer.h"
#include "parallel/communicator.h"
#include "parallel/pipeline_schedule.h"

namespace anvil {

struct PipelineMicroBatch {
  Tensor ids;      // i32 [B, T]
  Tensor targets;  // i32 [B, T]; ignore_index marks tokens without loss
  // backward_loss's arguments: the micro-batch's loss is multiplied by loss_scale (1/M for
  // accumulation) and its summed token losses divided by loss_tokens (-1: its own count;
  // data parallelism: the count over every dp rank's micro-batch m).
  float loss_scale = 1.0f;
  int64_t loss_tokens = -1;
};

struct PipelineStepResult {
  // On every pp rank (broadcast from the last stage): each micro-batch's mean loss over its
  // own non-ignored tokens, and the objective whose gradient the step accumulated:
  // sum over m of loss_scale_m * losses[m] * count_m / (loss_tokens_m, or count_m if -1).
  // With loss_scale 1/M that is the mean over micro-batches; under data parallelism (global
  // loss_tokens) its sum over dp ranks is the global batch's mean loss.
  std::vector<float> losses;
  double loss = 0;
  int peak_in_flight = 0;            // most micro-batch Caches this stage held at once
  size_t peak_activation_bytes = 0;  // most bytes they held together (measured after each forward)
};

class PipelineExecutor {
 public:
  // pp: the grid's pipeline communicator (rank = model's stage, size = its stages); may be
  // null when the model has one stage. Throws naming the mismatch otherwise.
  PipelineExecutor(TransformerLM& model, Communicator* pp, PipeSchedule schedule);

  // Called before each backward action with its micro-batch and whether it is this stage's
  // last backward of the step. Data parallelism: dp.set_sync_enabled(last), so only the
  // last backward's grad-ready reports start bucket reductions.
  using BeforeBackward = std::function<void(int micro_batch, bool last)>;
  void set_before_backward(BeforeBackward hook) { before_backward_ = std::move(hook); }

  // Runs this stage's table for the micro-batches: gradients accumulate (+=) into the
  // stage's params (zero them before), the tied embedding's two copies are summed
  // (TransformerLM::all_reduce_tied_embedding_grad) after the last backward, and the losses
  // are broadcast from the last stage. Collective over pp.
  PipelineStepResult step(const std::vector<PipelineMicroBatch>& micro_batches, int ignore_index = -100);

  // Forward only (evaluation): each micro-batch's mean loss over its non-ignored tokens, on
  // every pp rank; nothing is kept for backward and no gradient changes. Collective over pp.
  std::vector<float> evaluate(const std::vector<PipelineMicroBatch>& micro_batches, int ignore_index = -100);

 private:
  TransformerLM& model_;
  Communicator* pp_;
  PipeSchedule schedule_;
  int stage_, stages_;
  BeforeBackward before_backward_;
};

}  // namespace anvil
