// PipelineStage and PipelineLoss: what the pipeline executor drives. The executor knows no
// model: a stage is "forward micro-batch m, backward micro-batch m" over tensors it exchanges
// with its neighbours, and the last stage hands its output to a loss callback (Megatron-core's
// forward_step_func / loss_func split). A model (models/) implements PipelineStage; a task
// (trainer/) implements PipelineLoss. Each keeps its own per-micro-batch state (Caches, batch
// tensors), indexed by the micro-batch number the executor passes.
#pragma once
#include <cstddef>

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
};

}  // namespace anvil
