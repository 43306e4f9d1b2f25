#include "trainer/router_task.h"

#include <algorithm>

#include "models/family.h"
#include "parallel/data_parallel.h"
#include "parallel/pipeline_schedule.h"
#include "trainer/batch_context.h"
#include "trainer/lm_task.h"
#include "trainer/load_model.h"
#include "trainer/router_backbone.h"

namespace anvil {

std::vector<GateTotals> gate_totals(const std::vector<double>& stats) {
  std::vector<GateTotals> out;
  for (size_t i = 0; i + 1 < stats.size(); i += 2) out.push_back({stats[i], stats[i + 1]});
  return out;
}

RoutedStage::RoutedStage(TransformerLM& model, double capacity_weight, double capacity_target)
    : TransformerStage(model), weight_(capacity_weight), target_(capacity_target) {
  if (const RouterSpec* spec = model.routers()) {
    router_layers_ = spec->layers;
    for (int64_t layer : spec->layers)
      router_keys_.push_back(family_of(model.config()).layer(layer) + ".router.weight");
  }
}

void RoutedStage::set_routed_inputs(std::vector<Tensor> ids, std::vector<std::shared_ptr<StepContext>> contexts,
                                    float loss_scale) {
  contexts.resize(ids.size());
  for (auto& c : contexts)
    if (!c) c = std::make_shared<StepContext>();  // the routers report their gates into it
  contexts_ = contexts;
  loss_scale_ = loss_scale;
  step_totals_.assign(1 + router_keys_.size(), GateTotals{});
  set_inputs(std::move(ids), std::move(contexts));
}

Tensor RoutedStage::forward(int m, const Tensor& input, bool for_backward) {
  StepContext& c = *contexts_.at(m);
  c.router_stats = {};  // this forward's gates only
  c.router_capacity_grad = 0;
  c.router_training = for_backward;  // evaluation skips for real even with router.train_skipped
  return TransformerStage::forward(m, input, for_backward);
}

std::vector<float> RoutedStage::forward_stats(int m) const {
  const RouterGateStats& s = contexts_.at(m)->router_stats;
  std::vector<float> out = {static_cast<float>(s.gate_sum), static_cast<float>(s.units)};
  for (const std::string& key : router_keys_) {  // zeros for the other stages' routers
    const auto it = s.per_router.find(key);
    out.push_back(it == s.per_router.end() ? 0.0f : static_cast<float>(it->second.first));
    out.push_back(it == s.per_router.end() ? 0.0f : static_cast<float>(it->second.second));
  }
  return out;
}

double RoutedStage::penalty(const GateTotals& t) const { return weight_ * std::max(0.0, t.capacity() - target_); }

float RoutedStage::capacity_grad(const GateTotals& t) const {
  // d/dg of loss_scale * lambda * relu(G / N - target) for each of the N units: relu' is 0 at the kink.
  if (weight_ == 0 || t.units <= 0 || t.capacity() <= target_) return 0.0f;
  return static_cast<float>(loss_scale_ * weight_ / t.units);
}

void RoutedStage::set_stat_totals(int m, const std::vector<float>& totals) {
  const std::vector<GateTotals> t = gate_totals(std::vector<double>(totals.begin(), totals.end()));
  for (size_t k = 0; k < t.size() && k < step_totals_.size(); ++k) {
    step_totals_[k].gate_sum += t[k].gate_sum;
    step_totals_[k].units += t[k].units;
  }
  contexts_.at(m)->router_capacity_grad = capacity_grad(t.at(0));
}

RoutedLoss::RoutedLoss(RoutedStage& stage, PipelineLoss& objective, Communicator* data_group)
    : stage_(stage), objective_(objective), data_group_(data_group) {}

void RoutedLoss::begin(bool training, float loss_scale) {
  training_ = training;
  loss_scale_ = loss_scale;
  totals_.clear();
  eval_stats_.assign(stage_.stat_count(), 0.0);
  step_penalty_ = 0;
}

std::vector<float> RoutedLoss::reduce_stats(int m, std::vector<float> totals) {
  std::vector<double> stats(totals.begin(), totals.end());
  // The global micro-batch's: every dp rank's last stage, in micro-batch order.
  if (training_ && data_group_) stats = all_reduce_sum(*data_group_, stats);
  if (static_cast<int>(totals_.size()) <= m) totals_.resize(m + 1);
  totals_[m] = gate_totals(stats).at(0);
  if (!training_)
    for (size_t i = 0; i < stats.size(); ++i) eval_stats_[i] += stats[i];
  return std::vector<float>(stats.begin(), stats.end());
}

PipelineLoss::Value RoutedLoss::forward(int m, const Tensor& hidden, bool for_backward) {
  Value v = objective_.forward(m, hidden, for_backward);
  if (training_) {
    // The penalty is the global micro-batch's: each data-parallel rank adds its share, so the
    // objective's sum over the data group counts it once.
    const double share = data_group_ ? 1.0 / data_group_->size() : 1.0;
    const double p = loss_scale_ * stage_.penalty(totals_.at(m));
    step_penalty_ += p;
    v.objective += p * share;
  }
  return v;
}

namespace {
// capacity and each router layer's skip ratio from [0] total and [1 + k] per-layer totals.
std::vector<std::pair<std::string, double>> gate_metrics(const std::vector<GateTotals>& t,
                                                         const std::vector<int64_t>& layers) {
  std::vector<std::pair<std::string, double>> out = {{"capacity", t.at(0).capacity()}};
  for (size_t k = 0; k < layers.size() && k + 1 < t.size(); ++k)
    out.emplace_back("skip_l" + std::to_string(layers[k]), 1.0 - t[k + 1].capacity());
  return out;
}
}  // namespace

void MindSkipTask::build(const TaskEnv& env) {
  env_ = env;
  const RunConfig& config = *env.config;
  const RouterSection& r = config.router;
  model_ = build_routed_backbone(env, routers_);
  stage_ = std::make_unique<RoutedStage>(*model_, r.capacity_weight, r.capacity_target);
  const int ignore = static_cast<int>(config.training.ignore_index);
  PipelineLoss* objective = nullptr;
  if (r.objective == "kl") {
    LoadModelOptions options;  // the unrouted backbone, split as the routed one
    options.device = env.device;
    options.compute = env.compute;
    options.layout = env.layout;
    full_ = load_model(config.model.init_from, options).model;
    full_stage_ = std::make_unique<TransformerStage>(*full_);
    full_pipeline_ =
        std::make_unique<PipelineExecutor>(*full_stage_, env.pp, parse_pipe_schedule(config.parallel.pp_schedule));
    DistillSpec spec;
    spec.kind = DivergenceKind::ForwardKL;
    kl_loss_ = std::make_unique<DistillPipelineLoss>(*stage_, *full_, spec, false, 0.0, ignore);
    objective = kl_loss_.get();
  } else {
    lm_loss_ = std::make_unique<CausalLMLoss>(*stage_, ignore);
    objective = lm_loss_.get();
  }
  loss_ = std::make_unique<RoutedLoss>(*stage_, *objective, env.data_group);
}

bool MindSkipTask::loss_is_cross_entropy() const { return env_.config->router.objective == "lm"; }

PipelineLoss& MindSkipTask::prepare(const std::vector<Batch>& batches, bool training) {
  const int M = static_cast<int>(batches.size());
  const int64_t max_positions = model_->config().max_position_embeddings;
  LMStepInputs in = make_lm_step(env_, batches, training, max_positions);
  const float loss_scale = training ? 1.0f / static_cast<float>(M) : 0.0f;
  if (kl_loss_) {  // the unrouted backbone over the same micro-batches: its last stage keeps the hidden states
    std::vector<std::shared_ptr<StepContext>> contexts(M);
    for (int m = 0; m < M; ++m) contexts[m] = make_step_context(batches[m], max_positions, env_.device);
    full_stage_->set_inputs(in.ids, std::move(contexts));
    HiddenCapture capture(M);
    full_pipeline_->evaluate(M, capture);
    kl_loss_->set_micro_batches(in.micro, in.tokens, capture.take());
  } else {
    lm_loss_->set_micro_batches(in.micro, in.tokens);
  }
  stage_->set_routed_inputs(std::move(in.ids), std::move(in.contexts), loss_scale);
  loss_->begin(training, loss_scale);
  return *loss_;
}

std::vector<std::pair<std::string, double>> MindSkipTask::step_metrics() {
  // Every stage holds the step's global totals (the side channel brought them back); the
  // penalty is the last stage's, shared over pp so every rank logs the same.
  double penalty = loss_->step_penalty();
  if (env_.pp) penalty = all_reduce_sum(*env_.pp, penalty);
  std::vector<std::pair<std::string, double>> metrics = gate_metrics(stage_->step_totals(), stage_->router_layers());
  metrics.insert(metrics.begin() + 1, {"capacity_penalty", penalty});
  return metrics;
}

std::vector<std::pair<std::string, double>> MindSkipTask::eval_metrics() {
  std::vector<double> sums = loss_->eval_stats();
  if (env_.pp) sums = all_reduce_sum(*env_.pp, sums);  // only the last stage holds the totals
  if (env_.data_group) sums = all_reduce_sum(*env_.data_group, sums);
  return gate_metrics(gate_totals(sums), stage_->router_layers());
}

}  // namespace anvil
