// The `distill` task's EAGLE drafter (distill.drafter: eagle; models/eagle_drafter.h). Per
// micro-batch the frozen target runs forward once with HiddenTaps on distill.eagle_layers,
// keeping the three tapped states and its final hidden state; the drafter then runs its
// distill.ttt_steps training-time-test steps over the window (EagleStage), and EagleLoss scores
// every step's logits against the target's distribution at the position that step predicts,
// with distill.loss at distill.temperature and the decoder's filters (or CE on the data).
//
// The loss is Σ over steps of the step's divergence summed over its scored tokens, divided by the
// micro-batch's token count (the lm task's normaliser), so with one step it is the usual mean and
// each further step adds its own mean. acceptance / tau_sim are over every step's scored tokens.
// Under tp the target is loaded sharded like the drafter (models/eagle_drafter.h: block split,
// embedding and head vocab-parallel, fc / input_proj / norm replicated) and the divergence is
// vocab-parallel; dp works as for any model. sp and pp are refused (parallel.sp = pp = 1).
#pragma once
#include <map>
#include <memory>
#include <vector>

#include "models/distill_loss.h"
#include "models/eagle_drafter.h"
#include "models/lm_pipeline.h"
#include "trainer/task.h"

namespace anvil {

// One micro-batch's target outputs: the tapped states [B, T, h] and the final hidden state.
struct EagleTargetStates {
  std::vector<Tensor> taps;
  Tensor hidden;
};

// The drafter's training forward as the executor's (only) pipeline stage.
class EagleStage : public PipelineStage {
 public:
  EagleStage(EagleDrafter& drafter, int64_t steps) : drafter_(drafter), steps_(steps) {}
  void set_inputs(std::vector<Tensor> ids, std::vector<EagleTargetStates>* states);
  Shape input_shape(int m) const override;
  DType activation_dtype() const override { return drafter_.body().compute_dtype(); }
  Device device() const override { return drafter_.body().device(); }
  Tensor forward(int m, const Tensor& input, bool for_backward) override;
  Tensor backward(int m, const Tensor& dy) override;
  size_t saved_bytes() const override;

 private:
  EagleDrafter& drafter_;
  int64_t steps_;
  std::vector<Tensor> ids_;
  std::vector<EagleTargetStates>* states_ = nullptr;
  std::map<int, Cache> caches_;
};

// Every step's logits (the target's head on the stage's output) against the target's.
class EagleLoss : public PipelineLoss {
 public:
  EagleLoss(EagleDrafter& drafter, const DistillSpec& spec, int64_t steps, bool ce, int ignore_index);
  void set_micro_batches(const std::vector<LMMicroBatch>& micro_batches, std::vector<int64_t> counts,
                         std::vector<EagleTargetStates>* states);
  Value forward(int m, const Tensor& output, bool for_backward) override;
  Tensor backward(int m) override;
  size_t saved_bytes() const override;
  double acceptance_sum() const { return acceptance_sum_; }
  double scored_tokens() const { return scored_tokens_; }

 private:
  EagleDrafter& drafter_;
  DistillationLoss divergence_;
  int64_t steps_;
  bool ce_;
  int ignore_index_;
  std::vector<LMMicroBatch> micro_;
  std::vector<int64_t> counts_;
  std::vector<EagleTargetStates>* states_ = nullptr;
  std::map<int, Cache> caches_;
  double acceptance_sum_ = 0, scored_tokens_ = 0;
};

// What DistillTask holds for distill.drafter: eagle.
class EagleDistill {
 public:
  // Loads the target (distill.target) frozen on env.device and builds the drafter, initialised
  // from run.seed, both split by env.layout.tp. Throws before any work under sp or pp, or for
  // out-of-range eagle_layers.
  explicit EagleDistill(const TaskEnv& env);
  TransformerLM& model() { return drafter_->body(); }
  PipelineStage& stage() { return *stage_; }
  std::vector<Param*> own_params() { return drafter_->own_params(); }
  PipelineLoss& prepare(const std::vector<Batch>& batches, bool training);
  double acceptance_sum() const { return loss_->acceptance_sum(); }
  double scored_tokens() const { return loss_->scored_tokens(); }
  EagleDrafter& drafter() { return *drafter_; }

 private:
  TaskEnv env_;
  std::unique_ptr<TransformerLM> target_;
  std::unique_ptr<EagleDrafter> drafter_;
  std::unique_ptr<EagleStage> stage_;
  std::unique_ptr<EagleLoss> loss_;
  std::vector<EagleTargetStates> states_;
};

}  // namespace anvil
