// task.name: router with router.kind: drllm — Dr.LLM-style routers (models/drllm_router.h) on
// model.init_from's frozen backbone (trainer/router_backbone.h), trained by supervision:
//   1. Labels. Each training sequence's label path comes from the bounded search of
//      trainer/drllm_search.h (router.search_budget forward evaluations, loss tolerance
//      kDrLLMLossTolerance), run the first time the sequence is met and kept in
//      <run.out_dir>/drllm_labels (trainer/drllm_labels.h), so a resume or a later epoch reuses it.
//   2. Training. The backbone runs forward only along the label path (StepContext::layer_actions:
//      teacher forcing), each routed layer's router reads its detached windowed means, and the
//      focal loss with class balancing scores its logits against the label:
//        FL = -alpha_y (1 - p_y)^gamma log p_y,  p = softmax(z),  gamma = router.focal_gamma,
//        alpha_c = N / (3 n_c) over the step's labels (n_c of class c among N, every micro-batch
//        and dp rank; 0 for a class absent from the step): inverse label frequency, 1 when balanced.
//      The objective of micro-batch m is (1/M) * sum of FL over its (sequence, routed layer)
//      units / the global micro-batch's unit count, so every dp layout takes the same gradient.
//      Nothing flows into the backbone (no backward through it, no gradient between stages): each
//      stage scores its own routers, and the side channel brings the focal sums to the last stage.
//   Under pp the search's candidate paths run through the pipeline (forward only) and the last
//   stage's per-row losses are shared over pp, so every stage searches alike.
// The logged training loss is that focal objective; evaluation runs the routed model (the routers
// decide) and reports its cross-entropy as val_loss. Metrics: router_accuracy (argmax vs label),
// label_layers / router_layers (block passes per sequence along the label path / the routers'
// choices on it, all L layers counted: the base is L), path_loss (the LM loss along the label
// path), searched (sequences searched this step); val_layers after evaluation.
// A checkpoint holds the routers only. Runs under dp, tp and pp; sp is refused.
#pragma once
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "models/lm_pipeline.h"
#include "parallel/pipeline_executor.h"
#include "trainer/drllm_labels.h"
#include "trainer/drllm_search.h"
#include "trainer/task.h"

namespace anvil {

// The relative LM-loss increase a label path may have over the all-execute path.
constexpr double kDrLLMLossTolerance = 0.01;

// Focal loss over rows of logits (host f32 [N, 3]) against labels in {0, 1, 2}: returns the sum of
// FL over the rows and writes dlogits (host f32 [N, 3]) = scale * dFL/dz.
double drllm_focal_loss(const Tensor& logits, const std::vector<int32_t>& labels, const double alpha[3], double gamma,
                        double scale, Tensor& dlogits);
// alpha_c = N / (3 n_c) from the class counts (0 where n_c = 0).
void drllm_class_alpha(const double counts[3], double alpha[3]);

// This stage's share of a step's or an evaluation pass's sums, over its micro-batches.
struct DrLLMStageSums {
  double focal = 0, units = 0, correct = 0;  // focal loss, (sequence, routed layer) units, argmax == label
  double router_passes = 0;                  // block passes the routers chose at this stage's routed layers
};
// The loss stage's sums (the last stage's; zero elsewhere).
struct DrLLMPathSums {
  double sequences = 0, label_passes = 0;  // label_passes: block passes over all layers along the labels
  double path_loss = 0, path_tokens = 0;   // LM loss along the path taken
};

// The frozen trunk forward only (nothing saved, no gradient passes between stages or into it),
// then this stage's routers on the inputs their layers recorded: in training the focal loss
// against the labels, whose gradient they take at once (nothing flows through the backbone, so a
// stage needs nothing from the others); in evaluation their decisions. The side channel carries
// each micro-batch's focal sum and unit count to the last stage, which reports the step's loss.
class DrLLMStage : public PipelineStage {
 public:
  DrLLMStage(TransformerLM& model, TransformerStage& trunk, double gamma) : model_(model), trunk_(trunk), gamma_(gamma) {}
  // training: contexts carry the label paths (layer_actions); alpha of the step; units[m] the global
  // micro-batch m's unit count and loss_scale[m] its share of the objective. Evaluation: the routers
  // decide; a pass sums over all its calls until the next training step.
  void set_micro_batches(std::vector<std::shared_ptr<StepContext>> contexts, bool training, const double alpha[3],
                         std::vector<double> units, std::vector<float> loss_scales);
  Shape input_shape(int m) const override { return trunk_.input_shape(m); }
  DType activation_dtype() const override { return trunk_.activation_dtype(); }
  Device device() const override { return trunk_.device(); }
  Tensor forward(int m, const Tensor& input, bool for_backward) override;
  Tensor backward(int, const Tensor&) override { return Tensor(); }
  size_t saved_bytes() const override { return 0; }
  bool passes_gradient() const override { return false; }
  // Side channel: m's focal-loss sum and unit count at this stage.
  int stat_count() const override { return 2; }
  std::vector<float> forward_stats(int m) const override;
  const DrLLMStageSums& sums() const { return sums_; }

 private:
  TransformerLM& model_;
  TransformerStage& trunk_;
  double gamma_;
  std::vector<std::shared_ptr<StepContext>> contexts_;
  bool training_ = false;
  double alpha_[3] = {1, 1, 1};
  std::vector<double> units_;
  std::vector<float> loss_scales_;
  std::map<int, std::vector<float>> stats_;  // forward_stats of the micro-batches run
  DrLLMStageSums sums_;
};

// The last stage: the LM loss along the path taken, and the step's focal loss from the side channel.
class DrLLMLoss : public PipelineLoss {
 public:
  DrLLMLoss(TransformerLM& model, int ignore_index) : model_(model), ignore_(ignore_index) {}
  // micro-batches with their contexts (training: layer_actions = labels), units[m] as DrLLMStage's.
  void set_micro_batches(const std::vector<LMMicroBatch>& micro, std::vector<std::shared_ptr<StepContext>> contexts,
                         bool training, std::vector<double> units);
  std::vector<float> reduce_stats(int m, std::vector<float> totals) override;
  Value forward(int m, const Tensor& hidden, bool for_backward) override;
  Tensor backward(int) override { return Tensor(); }  // the routers took their gradients in forward
  const DrLLMPathSums& sums() const { return sums_; }

 private:
  TransformerLM& model_;
  int ignore_;
  std::vector<LMMicroBatch> micro_;
  std::vector<std::shared_ptr<StepContext>> contexts_;
  bool training_ = false;
  std::vector<double> units_;
  std::map<int, std::vector<float>> totals_;  // m's side-channel totals over every stage
  DrLLMPathSums sums_;
};

// The per-row LM loss of a search's candidate paths (one micro-batch), on the last stage.
class DrLLMRowLoss : public PipelineLoss {
 public:
  DrLLMRowLoss(TransformerLM& model, int ignore_index) : model_(model), ignore_(ignore_index) {}
  void set_targets(Tensor targets) { targets_ = std::move(targets); }
  Value forward(int m, const Tensor& hidden, bool for_backward) override;
  Tensor backward(int) override { ANVIL_FAIL("DrLLMRowLoss: the label search runs forward only"); }
  // Each row's mean token loss on the last stage (0 for a row without targets); empty elsewhere.
  std::vector<double> take() { return std::move(losses_); }

 private:
  TransformerLM& model_;
  int ignore_;
  Tensor targets_;
  std::vector<double> losses_;
};

class DrLLMTask : public Task {
 public:
  std::string name() const override { return "router"; }
  void build(const TaskEnv& env) override;
  TransformerLM& model() override { return *model_; }
  PipelineStage& stage() override { return *stage_; }
  PipelineLoss& prepare(const std::vector<Batch>& batches, bool training) override;
  std::vector<std::pair<std::string, double>> step_metrics() override { return metrics(true); }
  std::vector<std::pair<std::string, double>> eval_metrics() override { return metrics(false); }
  bool loss_is_cross_entropy() const override { return false; }
  std::vector<Param*> checkpoint_params() override { return routers_; }
  std::vector<Param*> tunable_params() override { return routers_; }

 private:
  // Each row's label path of micro-batch m (searched when not in the store): host i32 [B, L].
  Tensor label_actions(const Batch& batch, const LMMicroBatch& micro, const std::shared_ptr<StepContext>& context);
  // The LM loss of rows `rows` of a micro-batch, each under its own path over the routed layers.
  std::vector<double> path_losses(const LMMicroBatch& micro, const StepContext& context,
                                  const std::vector<int64_t>& rows, const std::vector<std::vector<int32_t>>& paths);
  std::vector<std::pair<std::string, double>> metrics(bool training);

  TaskEnv env_;
  std::unique_ptr<TransformerLM> model_;
  std::vector<Param*> routers_;
  std::vector<int64_t> layers_;  // the routed layers (every stage's)
  std::unique_ptr<TransformerStage> trunk_;
  std::unique_ptr<DrLLMStage> stage_;
  std::unique_ptr<DrLLMLoss> loss_;
  std::unique_ptr<PipelineExecutor> search_pipeline_;  // the label search's forwards, over trunk_
  std::unique_ptr<DrLLMRowLoss> row_loss_;
  std::unique_ptr<DrLLMLabelStore> labels_;
  double searched_ = 0;  // sequences searched in this step's prepare (this rank)
};

}  // namespace anvil
