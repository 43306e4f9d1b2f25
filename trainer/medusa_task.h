// The `medusa` task: K Medusa decoding heads (models/medusa_heads.h) on a pretrained base
// (model.init_from), ALGORITHMS.md §6.
//
// Medusa-1 (medusa.stage: 1): the base is frozen and built frozen (its weights only: no gradient,
// master or optimizer state). Its trunk runs forward only — nothing is saved for a backward, no
// gradient reaches it and none travels between pipeline stages (MedusaStage::passes_gradient) —
// and the heads train on its last hidden state:
//   L = Σ_k λ_k · s(step) · CE(head_k(h_t), x_{t+k+2}),  λ_k = heads_coefficient · decay^k,
// with s the schedule's ramp (constant | linear | sine over schedule_steps). Medusa-2 (stage: 2)
// trains everything jointly: L = L_backbone + the heads' sum, the heads stepping at
// lr × lr_multiplier (Param::lr_scale); the first warmup_steps steps are Medusa-1 steps (the
// backbone's lr_scale 0, its trunk forward only). The optimizer's step count runs through the
// warm-up, so the backbone's first AdamW step after it is bias-corrected as step warmup_steps + 1
// (smaller than a fresh optimizer's first step, as when Medusa's two stages share one optimizer). L_backbone is the data's cross-entropy
// (backbone_loss: lm) or, for self-distillation (backbone_loss: self_distill), the forward KL
// from the frozen original model — model.init_from again, loaded frozen and split like the
// model, run through its own pipeline forward only like distill's target — on text it
// generated (`anvil data generate`), so the backbone keeps its own distribution.
//
// Normalisation: every term's summed token losses are divided by the micro-batch's count of LM
// targets over the data group (the lm task's normaliser), so any dp/tp/pp layout takes the same
// gradient; head k scores T − k − 1 positions of a window (and none across a document boundary
// with data.packing: documents), so its term is its mean times (its tokens / the LM's).
// Each head runs forward and backward before the next (MedusaHeads), in the loss's forward:
// one head's logits are alive at a time; backward() hands the summed gradient of h to the stage.
//
// Metrics: head<k>_loss, head k's mean cross-entropy over its own tokens; heads_weight s(step);
// stage 2: backbone_loss (the backbone term's mean). Evaluation measures the backbone's
// cross-entropy in either stage (val_backbone_loss: the quality Medusa-2 must keep); it joins the
// validation loss in stage 2 only, so in stage 1 val_loss is the heads' objective alone.
// A checkpoint holds the heads (stage 1; the base reloads from model.init_from) or everything
// (stage 2). Under the grid: tp splits each head's vocabulary projection like lm_head, the heads
// live on the last pipeline stage, dp/ZeRO cover every trainable param; sp is refused.
#pragma once
#include <map>
#include <memory>
#include <vector>

#include "models/distill_loss.h"
#include "models/lm_pipeline.h"
#include "models/medusa_heads.h"
#include "trainer/task.h"

namespace anvil {

// The base's trunk as the pipeline stage, forward only while the backbone is frozen.
class MedusaStage : public PipelineStage {
 public:
  explicit MedusaStage(TransformerStage& trunk) : trunk_(trunk) {}
  void set_trunk_trains(bool on) { trunk_trains_ = on; }
  bool trunk_trains() const { return trunk_trains_; }
  Shape input_shape(int m) const override { return trunk_.input_shape(m); }
  DType activation_dtype() const override { return trunk_.activation_dtype(); }
  Device device() const override { return trunk_.device(); }
  Tensor forward(int m, const Tensor& input, bool for_backward) override;
  Tensor backward(int m, const Tensor& dy) override;
  size_t saved_bytes() const override { return trunk_.saved_bytes(); }
  void finish_backward(Communicator* pp) override;
  bool passes_gradient() const override { return trunk_trains_; }

 private:
  TransformerStage& trunk_;
  bool trunk_trains_ = false;
};

// What MedusaLoss adds up over the micro-batches since set_micro_batches (this rank's sums).
struct MedusaSums {
  std::vector<double> head_loss, head_tokens;  // per head: Σ token losses, tokens scored
  double backbone_loss = 0, backbone_tokens = 0;
};

// The heads' (and in stage 2 the backbone's) loss on the last stage's hidden state.
class MedusaLoss : public PipelineLoss {
 public:
  // heads: the model's (null except on the last pipeline stage, where the loss runs); teacher:
  // the frozen original model for backbone_loss self_distill (else null).
  MedusaLoss(TransformerLM& model, MedusaHeads* heads, const MedusaSection& spec, TransformerLM* teacher,
             int ignore_index);
  // The step's micro-batches; counts: each one's LM targets on this rank; head_targets[m][k]: head
  // k's targets (i32 [B, T] on the device); weights: each head's λ_k · s; backbone: whether the
  // backbone term is scored (stage 2 training, or evaluation); trains: whether the trunk takes
  // the gradient (else the heads' backward stops at h); teacher_hidden: the teacher's final hidden
  // state per micro-batch, whose KL scores the backbone (self_distill training; else empty: the
  // backbone term is the data's cross-entropy); backbone_in_objective: whether that term counts in
  // the loss (else it is measured only: a Medusa-1 evaluation reports the frozen base's loss apart).
  void set_micro_batches(const std::vector<LMMicroBatch>& micro_batches, std::vector<int64_t> counts,
                         std::vector<std::vector<Tensor>> head_targets, std::vector<double> weights, bool backbone,
                         bool trains, std::vector<Tensor> teacher_hidden, bool backbone_in_objective);
  Value forward(int m, const Tensor& hidden, bool for_backward) override;
  Tensor backward(int m) override;
  size_t saved_bytes() const override;
  const MedusaSums& sums() const { return sums_; }

 private:
  TransformerLM& model_;
  MedusaHeads* heads_;
  MedusaSection spec_;
  TransformerLM* teacher_;
  DistillationLoss divergence_;
  int ignore_index_;
  std::vector<LMMicroBatch> micro_;
  std::vector<int64_t> counts_;
  std::vector<std::vector<Tensor>> head_targets_;
  std::vector<double> weights_;
  bool backbone_ = false, trains_ = false;
  std::vector<Tensor> teacher_hidden_;
  bool backbone_in_objective_ = false;  // false: the backbone term is measured only (Medusa-1's evaluation)
  std::map<int, Tensor> dhidden_;  // per micro-batch, from forward to backward
  MedusaSums sums_;
};

// Head k's targets for a batch (host tensors): targets[b, t + k + 1] where that lies in the window
// and, with segment_ids, in the same document as position t; ignore_index elsewhere.
Tensor medusa_head_targets(const Batch& batch, int64_t k, int32_t ignore_index);

// The schedule's ramp s(step) in (0, 1] (constant | linear | sine over schedule_steps, else total_steps).
double medusa_schedule_factor(const MedusaSection& spec, int64_t step, int64_t total_steps);
// The weight of head k at a step: heads_coefficient · decay^k · s(step).
double medusa_head_weight(const MedusaSection& spec, int64_t k, int64_t step, int64_t total_steps);

class MedusaTask : public Task {
 public:
  std::string name() const override { return "medusa"; }
  void build(const TaskEnv& env) override;
  TransformerLM& model() override { return *model_; }
  PipelineStage& stage() override { return *stage_; }
  PipelineLoss& prepare(const std::vector<Batch>& batches, bool training) override;
  void begin_step(int64_t step) override { step_ = step; }
  std::vector<std::pair<std::string, double>> step_metrics() override { return metrics(true); }
  std::vector<std::pair<std::string, double>> eval_metrics() override { return metrics(false); }
  bool loss_is_cross_entropy() const override { return false; }
  // Stage 1: the heads (the base reloads from model.init_from); stage 2: everything.
  std::vector<Param*> checkpoint_params() override;
  std::vector<Param*> tunable_params() override { return checkpoint_params(); }

 private:
  std::vector<std::pair<std::string, double>> metrics(bool training);
  TaskEnv env_;
  std::unique_ptr<TransformerLM> model_, teacher_;
  std::unique_ptr<MedusaHeads> heads_;  // on the last pipeline stage only
  std::unique_ptr<TransformerStage> trunk_, teacher_stage_;
  std::unique_ptr<MedusaStage> stage_;
  std::unique_ptr<PipelineExecutor> teacher_pipeline_;
  std::unique_ptr<MedusaLoss> loss_;
  int64_t step_ = 0;
  double heads_weight_ = 1.0;  // s(step) of the last training step
};

}  // namespace anvil
