// task.name: router with router.kind: mindskip — MindSkip routers (Router-Tuning, ALGORITHMS.md
// §8) trained on model.init_from's frozen backbone (trainer/router_backbone.h). Only the routers'
// params train, and a checkpoint holds them alone: the backbone reloads from model.init_from
// (load_model, `anvil generate --routers`). dp/ZeRO shard the routers' gradients and state; tp
// and pp split the backbone as any model.
//
// Objective per micro-batch m (of M in the step), on the global micro-batch (every dp rank's):
//   objective lm: the cross-entropy of the routed model on the data (CausalLMLoss);
//          kl: forward KL from the frozen backbone without routers (a second, unrouted copy of
//              model.init_from run forward only, as DistillTask's target) to the routed model,
//              models/distill_loss.h;
//   plus the capacity penalty lambda * relu(c_m - target) / M, where c_m = (sum of the gates g
//   over every router layer and unit of m) / (layers x units), over every pipeline stage and
//   dp rank. Its gradient is the same for every gate unit: dP/dg = lambda * 1[c_m > target] /
//   (M * units_m), which the task hands the routers through StepContext::router_capacity_grad
//   before backward m (the routers add it to dL/dg before the straight-through estimator).
// c_m needs every stage's gates: the routers' sums travel with the activation through the
// pipeline's side channel (parallel/pipeline_stage.h), are all-reduced over the data group on
// the last stage, and come back with the gradient, so each stage knows c_m before its backward.
// The logged training loss is the objective (LM or KL + penalty); validation scores the LM (or
// KL) alone.
// Metrics: `capacity` (the step's gates over its units, every rank and stage) and
// `capacity_penalty`; after evaluation val_capacity.
#pragma once
#include <memory>
#include <utility>
#include <vector>

#include "models/lm_pipeline.h"
#include "trainer/distill_task.h"
#include "trainer/task.h"

namespace anvil {

// The statistics a routed stage sends through the pipeline's side channel per micro-batch.
struct GateTotals {
  double gate_sum = 0;  // sum of g over the units counted
  double units = 0;     // (layer, unit) pairs counted
  double capacity() const { return units > 0 ? gate_sum / units : 1.0; }
};

// A routed TransformerLM's stage: its forward collects the routers' gate statistics of each
// micro-batch (StepContext::router_stats), the side channel sums them over the stages, and before
// backward m it sets m's capacity-penalty gradient on m's step context.
class RoutedStage : public TransformerStage {
 public:
  // capacity_weight lambda and capacity_target of the penalty.
  RoutedStage(TransformerLM& model, double capacity_weight, double capacity_target);
  // As TransformerStage::set_inputs (a null context becomes a fresh one: the routers report into
  // it); loss_scale: each micro-batch's objective scale (1/M training, 0 evaluating).
  void set_routed_inputs(std::vector<Tensor> ids, std::vector<std::shared_ptr<StepContext>> contexts,
                         float loss_scale);

  Tensor forward(int m, const Tensor& input, bool for_backward) override;
  int stat_count() const override { return 2; }
  std::vector<float> forward_stats(int m) const override;
  void set_stat_totals(int m, const std::vector<float>& totals) override;

  // The penalty's value and dP/dg for micro-batch m's global totals.
  double penalty(const GateTotals& totals) const;
  float capacity_grad(const GateTotals& totals) const;
  // The global totals of the training step's micro-batches so far (set_stat_totals), on every stage.
  const GateTotals& step_totals() const { return step_totals_; }

 private:
  double weight_, target_;
  float loss_scale_ = 0;
  std::vector<std::shared_ptr<StepContext>> contexts_;
  GateTotals step_totals_;
};

// The objective's loss (CausalLMLoss or the KL's DistillPipelineLoss) plus the capacity penalty
// on the last stage; reduce_stats all-reduces the gate totals over the data group in training.
class RoutedLoss : public PipelineLoss {
 public:
  RoutedLoss(RoutedStage& stage, PipelineLoss& objective, Communicator* data_group);
  // Before each step or evaluation pass.
  void begin(bool training, float loss_scale);
  std::vector<float> reduce_stats(int m, std::vector<float> totals) override;
  Value forward(int m, const Tensor& hidden, bool for_backward) override;
  Tensor backward(int m) override { return objective_.backward(m); }
  size_t saved_bytes() const override { return objective_.saved_bytes(); }

  // Evaluation: this rank's totals over the pass (this data-parallel rank's micro-batches).
  const GateTotals& eval_totals() const { return eval_totals_; }
  double step_penalty() const { return step_penalty_; }

 private:
  RoutedStage& stage_;
  PipelineLoss& objective_;
  Communicator* data_group_;
  bool training_ = false;
  float loss_scale_ = 0;
  std::vector<GateTotals> totals_;  // per micro-batch (global in training)
  GateTotals eval_totals_;
  double step_penalty_ = 0;
};

class MindSkipTask : public Task {
 public:
  std::string name() const override { return "router"; }
  void build(const TaskEnv& env) override;
  TransformerLM& model() override { return *model_; }
  PipelineStage& stage() override { return *stage_; }
  PipelineLoss& prepare(const std::vector<Batch>& batches, bool training) override;
  std::vector<std::pair<std::string, double>> step_metrics() override;
  std::vector<std::pair<std::string, double>> eval_metrics() override;
  bool loss_is_cross_entropy() const override;
  // The routers only: the backbone is model.init_from's, frozen.
  std::vector<Param*> checkpoint_params() override { return routers_; }
  std::vector<Param*> tunable_params() override { return routers_; }

 private:
  TaskEnv env_;
  std::unique_ptr<TransformerLM> model_;
  std::vector<Param*> routers_;
  std::unique_ptr<RoutedStage> stage_;
  std::unique_ptr<CausalLMLoss> lm_loss_;
  // objective kl: the unrouted backbone, its forward-only pipeline, and the divergence.
  std::unique_ptr<TransformerLM> full_;
  std::unique_ptr<TransformerStage> full_stage_;
  std::unique_ptr<PipelineExecutor> full_pipeline_;
  std::unique_ptr<DistillPipelineLoss> kl_loss_;
  std::unique_ptr<RoutedLoss> loss_;
};

}  // namespace anvil
