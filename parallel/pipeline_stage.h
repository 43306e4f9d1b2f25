// PipelineStage and PipelineLoss: what the pipeline executor drives. The executor knows no
// model: a stage is "forward micro-batch m, backward micro-batch m" over tensors it exchanges
// with its neighbours, and the last stage hands its output to a loss callback (Megatron-core's
// forward_step_func / loss_func split). A model (models/) implements PipelineStage; a task
// (trainer/) implements PipelineLoss. Each keeps its own per-micro-batch state (Caches, batch
// tensors), indexed by the micro-batch number the executor passes.
#pragma once
#include <cstddef>
#include <vector>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace anvil {

class PipelineStage {
 public:
  virtual ~PipelineStage() = default;

  // The activation this stage receives from the previous stage for micro-batch m (the
  // previous stage's forward output): its shape, dtype and device, so the executor can post
  // the receive before it arrives. Not called on the first stage.
  virtual Shape input_shape(int m) const = 0;
  virtual DType activation_dtype() const = 0;
  virtual Device device() const = 0;

  // Forward of micro-batch m. input: undefined on the first stage (the stage reads m's
  // inputs itself), else the previous stage's output. Returns the output: sent to the next
  // stage, or on the last stage passed to the loss callback. With `for_backward` false
  // (evaluation) nothing is saved for a backward.
  virtual Tensor forward(int m, const Tensor& input, bool for_backward) = 0;
  // Backward of micro-batch m: dy is the gradient of forward(m)'s output (from the next stage
  // or the loss). Accumulates (+=) the stage's parameter gradients, drops m's saved state and
  // returns the gradient of m's input (undefined on the first stage).
  virtual Tensor backward(int m, const Tensor& dy) = 0;
  // Bytes the stage holds for the micro-batches whose forward ran and backward did not.
  virtual size_t saved_bytes() const = 0;
  // After the step's last backward, before the executor returns: collectives that complete
  // the step's gradients across stages (the tied embedding's two copies). Collective over pp
  // (null with one stage); the default does nothing.
  virtual void finish_backward(Communicator* pp) { (void)pp; }
  // Whether backward needs the gradient of this stage's output from the next stage and returns
  // the gradient of its input. False when nothing before the loss trains (Medusa-1's heads on a
  // frozen trunk: the loss's own params take their gradients, the trunk runs forward only): then
  // no gradient travels between stages, backward gets an undefined dy except on the last stage
  // (the loss's, which it may ignore) and returns an undefined tensor. Must answer alike on
  // every stage of a step.
  virtual bool passes_gradient() const { return true; }

  // Side channel: a few f32 statistics of each micro-batch that travel with it through the
  // pipeline, for an objective that depends on the whole model's state of the micro-batch (a
  // capacity penalty over every router layer, trainer/router_task.h; a loss sum over all layers).
  // Forward: each stage adds its own statistics of m (forward_stats, after forward(m)) to what
  // the previous stage sent, and sends the sum on with the activation; on the last stage the
  // totals pass through PipelineLoss::reduce_stats (e.g. an all-reduce over data parallelism)
  // before PipelineLoss::forward(m). Backward (step() only): the last stage's reduced totals
  // travel back with the gradient, so every stage gets them (set_stat_totals) before its
  // backward(m). Evaluation carries them forward only: the loss sees them, the stages do not.
  // stat_count(): how many statistics per micro-batch, the same on every stage of a step (0: no
  // side channel, nothing is sent). Elementwise sums of f32: integer counts stay exact to 2^24.
  virtual int stat_count() const { return 0; }
  // After forward(m): this stage's own statistics of m, stat_count() of them.
  virtual std::vector<float> forward_stats(int m) const { (void)m; return {}; }
  // Before backward(m): the reduced totals of m over every stage.
  virtual void set_stat_totals(int m, const std::vector<float>& totals) { (void)m, (void)totals; }
};

// The loss of the last stage's output, one micro-batch at a time.
class PipelineLoss {
 public:
  virtual ~PipelineLoss() = default;
  struct Value {
    float loss = 0;        // the micro-batch's loss as reported: a mean over `weight` (its tokens)
    double weight = 0;     // what the mean is over, on this rank (e.g. its non-ignored targets)
    double objective = 0;  // its contribution to the objective whose gradient backward returns
  };
  // output: the last stage's forward output for micro-batch m. With `for_backward` false
  // (evaluation) nothing is saved.
  virtual Value forward(int m, const Tensor& output, bool for_backward) = 0;
  // The gradient of forward(m)'s objective with respect to its output; drops m's saved state.
  virtual Tensor backward(int m) = 0;
  // Bytes held for micro-batches whose forward ran and backward did not (beyond the stage's).
  virtual size_t saved_bytes() const { return 0; }
  // The side channel (PipelineStage::stat_count): on the last stage, before forward(m), the
  // totals of m's statistics over every stage; returns them as every stage should see them (a
  // loss over data-parallel replicas all-reduces them here: it runs in micro-batch order, which
  // is the same on every replica's last stage). Called in step() and evaluate().
  virtual std::vector<float> reduce_stats(int m, std::vector<float> totals) { (void)m; return totals; }
};

}  // namespace anvil
