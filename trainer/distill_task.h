// The `distill` task: a drafter for speculative decoding distilled from a frozen target inside
// the same job (issue 14, ALGORITHMS.md §7). The drafter is the run's trainable model (the
// model section, or model.init_from); the target (distill.target: an anvil checkpoint or a
// Hugging Face directory) is loaded frozen, sharded by the drafter's ModelLayout (tp, sp and
// pipeline stage), so it costs its weights only and no hidden states ever go to disk.
//
// A step, per micro-batch:
//   1. prepare(): the target's trunk runs forward only through its own PipelineExecutor (one
//      stage: plain forwards); its last stage keeps the final hidden state [B, T, hidden] of
//      each micro-batch (small; the target's logits are never stored for the whole step);
//   2. the trainer's executor runs the drafter; on its last stage DistillPipelineLoss takes the
//      drafter's logits (forward_head), the target's logits from the kept hidden state just
//      then, and scores them with DistillationLoss (models/distill_loss.h) at distill.temperature
//      with the decoder's top-k / top-p; loss: ce scores the drafter's logits against the data
//      with the model's cross-entropy instead (the data is then target-generated text);
//      distill.ce_weight w > 0 adds w x that cross-entropy to the divergence (both per-token means).
// LREC (INT2.1, ALGORITHMS.md §9): with a lora (and quant) section the standalone drafter is
// model.init_from's base built frozen, quantized and adapted as LMTask builds it
// (build_adaptable_lm); only the adapters train, and the loss is forward KL + ce_weight x CE to
// the dense target, which runs live (no teacher logits on disk).
// Metrics: the loss; `acceptance` ᾱ, the mean of α = Σ min(p, q) over the step's scored tokens,
// and `tau_sim` = (1 − ᾱ^{γ+1}) / (1 − ᾱ), the expected tokens per target call at γ =
// distill.gamma (ALGORITHMS.md §7); the same over the validation pass (val_acceptance,
// val_tau_sim); with distill.on_policy > 0, `on_policy_fraction`, the share of the step's
// micro-batches sampled from the drafter (trainer/on_policy.h; training steps only); with ce_weight
// > 0, `ce` (and val_ce), the drafter's mean cross-entropy on the data: an LM loss comparable with
// the target's. A checkpoint holds the drafter only (with LoRA its adapters and packed base, as
// LMTask's): the target reloads from its own source.
#pragma once
#include <memory>
#include <vector>

#include "models/distill_loss.h"
#include "models/lm_pipeline.h"
#include "trainer/eagle_distill.h"
#include "trainer/task.h"

namespace anvil {

// The drafter's loss on its last pipeline stage, against the target's kept hidden states.
class DistillPipelineLoss : public PipelineLoss {
 public:
  // target: the frozen target's stage (its last stage when split); ce: score the data's
  // labels instead of the target's distribution (the acceptance is measured either way);
  // ce_weight: otherwise, the weight of the data's cross-entropy added to the divergence.
  DistillPipelineLoss(TransformerStage& drafter, TransformerLM& target, const DistillSpec& spec, bool ce,
                      double ce_weight, int ignore_index);

  // The step's micro-batches, each one's count of scored targets on this rank, and the
  // target's final hidden state per micro-batch (on the last stage; empty elsewhere).
  void set_micro_batches(const std::vector<LMMicroBatch>& micro_batches, std::vector<int64_t> counts,
                         std::vector<Tensor> target_hidden);
  // ParallelSpec (trainer/parallel_spec_rows.h): per micro-batch, the row of the target's
  // [B·n] outputs that scores each drafter slot (i32 [B·T]); empty: slot for slot.
  void set_teacher_slots(std::vector<Tensor> slots) { teacher_slots_ = std::move(slots); }

  Value forward(int m, const Tensor& hidden, bool for_backward) override;
  Tensor backward(int m) override;

  // Σ α and the scored tokens since set_micro_batches, on this rank (sp group sums, as the loss).
  double acceptance_sum() const { return acceptance_sum_; }
  double scored_tokens() const { return scored_tokens_; }
  // Σ of the drafter's cross-entropy over the same tokens (with ce_weight > 0; else 0).
  double ce_sum() const { return ce_sum_; }

 private:
  TransformerStage& drafter_;
  TransformerLM& target_;
  DistillationLoss divergence_;
  bool ce_;
  float ce_weight_;
  int ignore_index_;
  std::vector<LMMicroBatch> micro_;
  std::vector<int64_t> counts_;
  std::vector<Tensor> target_hidden_;
  std::vector<Tensor> teacher_slots_;
  double acceptance_sum_ = 0, scored_tokens_ = 0, ce_sum_ = 0;
};

class DistillTask : public Task {
 public:
  std::string name() const override { return "distill"; }
  // Checks the target against the drafter (vocabulary, tokenizer, layout) before loading it.
  void build(const TaskEnv& env) override;
  TransformerLM& model() override { return eagle_ ? eagle_->model() : *drafter_; }
  PipelineStage& stage() override { return eagle_ ? eagle_->stage() : *stage_; }
  PipelineLoss& prepare(const std::vector<Batch>& batches, bool training) override;
  void begin_step(int64_t step) override { step_ = step; }
  std::vector<std::pair<std::string, double>> step_metrics() override;
  std::vector<std::pair<std::string, double>> eval_metrics() override { return acceptance_metrics(); }
  bool loss_is_cross_entropy() const override;
  // checkpoint_params: the drafter's only; the target reloads from distill.target. An EAGLE
  // drafter's: its own (its embedding and head are the target's), which alone can train.
  // A LoRA drafter's: its adapters and packed base (lora_checkpoint_params); the adapters alone tune.
  std::vector<Param*> checkpoint_params() override;
  std::vector<Param*> tunable_params() override;

 private:
  // acceptance, tau_sim (and ce with ce_weight > 0) over the last prepare()'s micro-batches: a
  // collective over pp and the data group, the same on every rank.
  std::vector<std::pair<std::string, double>> acceptance_metrics();
  // distill.on_policy: the step's batches with its on-policy micro-batches replaced by rows the
  // drafter samples (trainer/on_policy.h); sets on_policy_fraction_.
  std::vector<Batch> with_on_policy_rows(const std::vector<Batch>& batches);
  // prepare() of a standalone or ParallelSpec drafter over the given rows.
  PipelineLoss& prepare_rows(const std::vector<Batch>& batches, bool training);

  TaskEnv env_;
  std::unique_ptr<TransformerLM> drafter_, target_;
  std::vector<Param*> adapters_;  // lora section: the drafter's adapters (else empty)
  std::unique_ptr<TransformerStage> stage_, target_stage_;
  std::unique_ptr<PipelineExecutor> target_pipeline_;
  std::unique_ptr<DistillPipelineLoss> loss_;
  int64_t masks_ = 0, anchors_ = 0;  // drafter parallelspec: mask tokens and anchors per row (else 0)
  int64_t step_ = 0;               // training steps done (begin_step)
  double on_policy_fraction_ = 0;  // the last training step's share of sampled micro-batches
  std::unique_ptr<EagleDistill> eagle_;  // distill.drafter: eagle (the members above stay empty)
};

}  // namespace anvil
