// A TransformerLM's trunk as a pipeline stage, and the causal-LM loss on its last stage's
// hidden state (parallel/pipeline_stage.h), plus LMPipeline, which runs the plain LM objective
// through a PipelineExecutor. Tasks (trainer/task.h) compose the stage with their own losses.
#pragma once
#include <map>
#include <memory>
#include <vector>

#include "models/transformer.h"
#include "parallel/pipeline_executor.h"

namespace anvil {

// One micro-batch of the causal-LM objective.
struct LMMicroBatch {
  Tensor ids;      // i32 [B, T]
  Tensor targets;  // i32 [B, T]; ignore_index marks tokens without loss
  // backward's arguments: the micro-batch's loss is multiplied by loss_scale (1/M for
  // accumulation) and its summed token losses divided by loss_tokens (-1: its own count;
  // data parallelism: the count over every dp rank's micro-batch m).
  float loss_scale = 1.0f;
  int64_t loss_tokens = -1;
};

// Micro-batch mb's loss value from its mean loss over this rank's `count` scored tokens: weighed
// by count, and the objective a mean over mb.loss_tokens (the group's tokens) when that is set.
PipelineLoss::Value token_mean_loss(float loss, const LMMicroBatch& mb, int64_t count);

// This rank's pipeline stage of a TransformerLM's trunk (embeddings on the first stage, its
// blocks, the final norm on the last): the executor passes hidden states [B, T, hidden] in
// the model's compute dtype between stages, and the last stage's output is the final hidden
// state, which a PipelineLoss scores (through the model's head, or a task's own heads).
class TransformerStage : public PipelineStage {
 public:
  explicit TransformerStage(TransformerLM& model);

  // The step's micro-batch inputs, token ids i32 [B, T] on the model's device, set on every
  // stage alike (later stages take their shapes to size what they receive), and each one's
  // step context (models/step_context.h: position ids, document boundaries), set on its Cache
  // so every module reads it; empty or null entries: today's contiguous causal batches.
  void set_inputs(std::vector<Tensor> ids, std::vector<std::shared_ptr<StepContext>> contexts = {});
  int micro_batches() const { return static_cast<int>(ids_.size()); }

  Shape input_shape(int m) const override;
  DType activation_dtype() const override { return model_.compute_dtype(); }
  Device device() const override { return model_.device(); }
  Tensor forward(int m, const Tensor& input, bool for_backward) override;
  Tensor backward(int m, const Tensor& dy) override;
  size_t saved_bytes() const override;
  void finish_backward(Communicator* pp) override;

  // Micro-batch m's saved state, from its forward to its backward. A loss on the last stage
  // keeps its own state in model().head_cache(cache(m)), so it is measured and dropped with
  // the stage's.
  Cache& cache(int m);
  TransformerLM& model() { return model_; }

 private:
  TransformerLM& model_;
  std::vector<Tensor> ids_;
  std::vector<std::shared_ptr<StepContext>> contexts_;  // one per micro-batch, or empty
  std::map<int, Cache> caches_;
};

// The causal-LM loss on the last stage: the model's head, then its cross-entropy. The
// objective of micro-batch m is loss_scale * (summed token losses) / loss_tokens (see
// LMMicroBatch); its reported loss is the mean over its own tokens and its weight this rank's
// count of non-ignored targets.
class CausalLMLoss : public PipelineLoss {
 public:
  CausalLMLoss(TransformerStage& stage, int ignore_index);
  // The step's micro-batches (targets on the model's device) and each one's count of
  // non-ignored targets on this rank; empty `counts`: counted here (copying targets to the host).
  void set_micro_batches(const std::vector<LMMicroBatch>& micro_batches, std::vector<int64_t> counts = {});

  Value forward(int m, const Tensor& hidden, bool for_backward) override;
  Tensor backward(int m) override;

 private:
  TransformerStage& stage_;
  int ignore_index_;
  std::vector<LMMicroBatch> micro_;
  std::vector<int64_t> counts_;  // non-ignored targets per micro-batch, on this rank
};

// The last stage's output of a frozen model's trunk, kept per micro-batch: the "loss" of a
// forward-only pipeline (PipelineExecutor::evaluate) over a distillation target or a
// self-distillation teacher, whose head then runs where its logits are needed.
class HiddenCapture : public PipelineLoss {
 public:
  explicit HiddenCapture(int micro_batches) : hidden_(micro_batches) {}
  Value forward(int m, const Tensor& hidden, bool) override {
    hidden_.at(m) = hidden;
    return {};
  }
  Tensor backward(int) override { ANVIL_FAIL("HiddenCapture: a frozen model's pipeline runs forward only"); }
  std::vector<Tensor> take() { return std::move(hidden_); }

 private:
  std::vector<Tensor> hidden_;
};

// The number of targets != ignore_index (copied to the host when on a device).
int64_t count_loss_tokens(const Tensor& targets, int ignore_index);

// The plain LM objective through a PipelineExecutor: a TransformerStage and a CausalLMLoss.
// With one stage (pp null) a step is plain gradient accumulation over the micro-batches.
class LMPipeline {
 public:
  // pp: the grid's pipeline communicator (rank = the model's stage, size = its stages); may be
  // null when the model has one stage. Throws naming the mismatch otherwise.
  LMPipeline(TransformerLM& model, Communicator* pp, PipeSchedule schedule, int ignore_index = -100);

  void set_before_backward(PipelineExecutor::BeforeBackward hook) { executor_.set_before_backward(std::move(hook)); }
  // Every rank of the pipeline passes the same micro-batches (ids and targets of one shape):
  // the first stage embeds the ids, the last scores the targets, and every stage takes their
  // shapes to size the messages it receives. Gradients accumulate (+=); see PipelineExecutor::step.
  PipelineStepResult step(const std::vector<LMMicroBatch>& micro_batches);
  // Each micro-batch's mean loss over its non-ignored tokens, on every pp rank; nothing is
  // kept for backward and no gradient changes.
  std::vector<float> evaluate(const std::vector<LMMicroBatch>& micro_batches);

 private:
  void set(const std::vector<LMMicroBatch>& micro_batches);
  TransformerStage stage_;
  CausalLMLoss loss_;
  PipelineExecutor executor_;
};

}  // namespace anvil
