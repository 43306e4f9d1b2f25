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
//      Nothing flows into the backbone (no backward through it, no gradient between stages).
// The logged training loss is that focal objective; evaluation runs the routed model (the routers
// decide) and reports its cross-entropy as val_loss. Metrics: router_accuracy (argmax vs label),
// label_layers / router_layers (block passes per sequence along the label path / the routers'
// choices on it, all L layers counted: the base is L), path_loss (the LM loss along the label
// path), searched (sequences searched this step); val_layers after evaluation.
// A checkpoint holds the routers only. Runs under dp and tp; pp and sp are refused.
#pragma once
#include <memory>
#include <utility>
#include <vector>

#include "models/lm_pipeline.h"
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

// The frozen trunk forward only (nothing saved, no gradient passes between stages or into it).
class DrLLMStage : public PipelineStage {
 public:
  explicit DrLLMStage(TransformerStage& trunk) : trunk_(trunk) {}
  Shape input_shape(int m) const override { return trunk_.input_shape(m); }
  DType activation_dtype() const override { return trunk_.activation_dtype(); }
  Device device() const override { return trunk_.device(); }
  Tensor forward(int m, const Tensor& input, bool) override { return trunk_.forward(m, input, false); }
  Tensor backward(int, const Tensor&) override { return Tensor(); }
  size_t saved_bytes() const override { return 0; }
  bool passes_gradient() const override { return false; }

 private:
  TransformerStage& trunk_;
};

// This rank's sums over the micro-batches of a step or an evaluation pass.
struct DrLLMSums {
  double focal = 0, units = 0, correct = 0;  // focal loss, (sequence, routed layer) units, argmax == label
  double sequences = 0, label_passes = 0, router_passes = 0;  // block passes over all layers, summed over sequences
  double path_loss = 0, path_tokens = 0;     // LM loss along the path taken
};

class DrLLMLoss : public PipelineLoss {
 public:
  DrLLMLoss(TransformerLM& model, int ignore_index, double gamma) : model_(model), ignore_(ignore_index), gamma_(gamma) {}
  // training: micro-batches with layer_actions (labels) on their contexts, alpha of the step,
  // units[m] the global micro-batch m's unit count; evaluation: the routers decide.
  void set_micro_batches(const std::vector<LMMicroBatch>& micro, std::vector<std::shared_ptr<StepContext>> contexts,
                         bool training, const double alpha[3], std::vector<double> units);
  Value forward(int m, const Tensor& hidden, bool for_backward) override;
  Tensor backward(int) override { return Tensor(); }  // the routers took their gradients in forward
  DrLLMSums& sums() { return sums_; }

 private:
  TransformerLM& model_;
  int ignore_;
  double gamma_;
  std::vector<LMMicroBatch> micro_;
  std::vector<std::shared_ptr<StepContext>> contexts_;
  bool training_ = false;
  double alpha_[3] = {1, 1, 1};
  std::vector<double> units_;
  DrLLMSums sums_;
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
  std::unique_ptr<DrLLMLabelStore> labels_;
  double searched_ = 0;  // sequences searched in this step's prepare (this rank)
};

}  // namespace anvil
