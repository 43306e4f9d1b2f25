#include "trainer/drllm_task.h"

#include <cmath>

#include "models/drllm_actions.h"
#include "parallel/data_parallel.h"
#include "parallel/pipeline_schedule.h"
#include "trainer/lm_task.h"
#include "trainer/router_backbone.h"

namespace anvil {

void drllm_class_alpha(const double counts[3], double alpha[3]) {
  const double total = counts[0] + counts[1] + counts[2];
  for (int c = 0; c < kBlockActions; ++c) alpha[c] = counts[c] > 0 ? total / (kBlockActions * counts[c]) : 0.0;
}

double drllm_focal_loss(const Tensor& logits, const std::vector<int32_t>& labels, const double alpha[3], double gamma,
                        double scale, Tensor& dlogits) {
  const Tensor z = logits.to(Device::cpu()).to(DType::F32).contiguous();
  const int64_t N = z.size(0);
  ANVIL_CHECK(z.dim() == 2 && z.size(1) == kBlockActions && static_cast<int64_t>(labels.size()) == N,
              "Dr.LLM focal loss: logits ", logits.describe(), " and ", labels.size(), " labels do not match");
  dlogits = Tensor::zeros({N, kBlockActions});
  const float* pz = z.data<float>();
  float* pd = dlogits.data<float>();
  double total = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int y = labels[static_cast<size_t>(i)];
    ANVIL_CHECK(y >= 0 && y < kBlockActions, "Dr.LLM focal loss: label ", y, " is not 0, 1 or 2");
    double mx = pz[i * 3];
    for (int k = 1; k < 3; ++k) mx = std::max(mx, static_cast<double>(pz[i * 3 + k]));
    double p[3], sum = 0;
    for (int k = 0; k < 3; ++k) sum += p[k] = std::exp(pz[i * 3 + k] - mx);
    for (double& v : p) v /= sum;
    const double log_py = pz[i * 3 + y] - mx - std::log(sum), q = 1.0 - p[y];
    total += -alpha[y] * std::pow(q, gamma) * log_py;
    // dFL/dz_j = alpha [gamma q^(gamma-1) p_y log p_y - q^gamma] (delta_yj - p_j); the first term -> 0 as q -> 0.
    const double first = q > 1e-30 ? gamma * std::pow(q, gamma - 1.0) * p[y] * log_py : 0.0;
    const double coef = alpha[y] * (first - std::pow(q, gamma));
    for (int j = 0; j < 3; ++j) pd[i * 3 + j] = static_cast<float>(scale * coef * ((j == y ? 1.0 : 0.0) - p[j]));
  }
  return total;
}

void DrLLMStage::set_micro_batches(std::vector<std::shared_ptr<StepContext>> contexts, bool training,
                                   const double alpha[3], std::vector<double> units, std::vector<float> loss_scales) {
  if (training || training_) sums_ = DrLLMStageSums{};  // an evaluation pass sums over all its batches
  contexts_ = std::move(contexts);
  training_ = training;
  for (int c = 0; c < kBlockActions; ++c) alpha_[c] = alpha[c];
  units_ = std::move(units);
  loss_scales_ = std::move(loss_scales);
  stats_.clear();
}

Tensor DrLLMStage::forward(int m, const Tensor& input, bool for_backward) {
  Tensor out = trunk_.forward(m, input, false);
  StepContext& ctx = *contexts_.at(static_cast<size_t>(m));
  const int64_t L = model_.config().num_hidden_layers;
  const Tensor labels = training_ ? ctx.layer_actions.contiguous() : Tensor();
  double focal = 0, units = 0;
  for (StepContext::DrLLMRouterInput& in : ctx.drllm_inputs) {
    DrLLMRouter* router = model_.drllm_routers()->at(in.layer);
    ANVIL_CHECK(router != nullptr, "Dr.LLM: layer ", in.layer, " recorded a router input but has no router");
    if (!training_) {
      for (int32_t a : drllm_actions(router->infer(in.means))) sums_.router_passes += a;
      continue;
    }
    const int64_t B = in.means.size(0);
    std::vector<int32_t> y(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) y[b] = labels.data<int32_t>()[b * L + in.layer];
    Cache rc;
    const Tensor z = router->forward(in.means, rc);
    Tensor dz;
    focal += drllm_focal_loss(z, y, alpha_, gamma_, loss_scales_.at(m) / units_.at(m), dz);
    if (for_backward) router->backward(dz, rc);
    const std::vector<int32_t> chosen = drllm_actions(z);
    for (int64_t b = 0; b < B; ++b) {
      sums_.correct += chosen[b] == y[b];
      sums_.router_passes += chosen[b];
    }
    units += static_cast<double>(B);
  }
  ctx.drllm_inputs.clear();
  sums_.focal += focal;
  sums_.units += units;
  stats_[m] = {static_cast<float>(focal), static_cast<float>(units)};
  return out;
}

std::vector<float> DrLLMStage::forward_stats(int m) const { return stats_.at(m); }

void DrLLMLoss::set_micro_batches(const std::vector<LMMicroBatch>& micro,
                                  std::vector<std::shared_ptr<StepContext>> contexts, bool training,
                                  std::vector<double> units) {
  if (training || training_) sums_ = DrLLMPathSums{};  // an evaluation pass sums over all its batches
  micro_ = micro;
  contexts_ = std::move(contexts);
  training_ = training;
  units_ = std::move(units);
  totals_.clear();
}

std::vector<float> DrLLMLoss::reduce_stats(int m, std::vector<float> totals) {
  totals_[m] = totals;
  return totals;
}

PipelineLoss::Value DrLLMLoss::forward(int m, const Tensor& hidden, bool) {
  const LMMicroBatch& mb = micro_.at(m);
  const StepContext& ctx = *contexts_.at(m);
  const int64_t B = hidden.size(0), L = model_.config().num_hidden_layers;
  // The LM loss along the path the trunk took (the labels' in training, the routers' in evaluation).
  double lm = 0, tokens = 0;
  {
    Cache c;
    const CrossEntropyLoss ce = model_.cross_entropy();
    lm = ce.forward(model_.forward_head(hidden, c.child(0)), mb.targets, c, ignore_);
    tokens = CrossEntropyLoss::token_count(c);
  }
  sums_.path_loss += lm * tokens;
  sums_.path_tokens += tokens;
  sums_.sequences += static_cast<double>(B);
  if (training_) {
    const Tensor labels = ctx.layer_actions.contiguous();
    for (int64_t i = 0; i < B * L; ++i) sums_.label_passes += labels.data<int32_t>()[i];
  }
  Value v;
  if (!training_) {
    v.loss = static_cast<float>(lm);
    v.weight = tokens;
    v.objective = lm;
    return v;
  }
  const std::vector<float>& t = totals_.at(m);  // focal sum and units over every stage
  const double focal = t.at(0), units = t.at(1);
  v.loss = units > 0 ? static_cast<float>(focal / units) : 0.0f;
  v.weight = units;
  v.objective = mb.loss_scale * focal / units_.at(m);
  return v;
}

PipelineLoss::Value DrLLMRowLoss::forward(int, const Tensor& hidden, bool) {
  Tensor logits;
  {
    Cache head;
    logits = model_.forward_head(hidden, head);
  }
  const CrossEntropyLoss ce = model_.cross_entropy();
  const int64_t R = logits.size(0);
  losses_.assign(static_cast<size_t>(R), 0.0);
  for (int64_t r = 0; r < R; ++r) {
    Cache c;
    const float mean = ce.forward(logits.slice(0, r, r + 1), targets_.slice(0, r, r + 1), c, ignore_);
    losses_[static_cast<size_t>(r)] = CrossEntropyLoss::token_count(c) > 0 ? mean : 0.0;
  }
  return {};
}

void DrLLMTask::build(const TaskEnv& env) {
  env_ = env;
  const RunConfig& config = *env.config;
  ANVIL_CHECK(env.layout.sp == nullptr, config.source, ": router.kind: drllm decides per whole sequence (windowed "
              "means over all its tokens) — set parallel.sp: 1");
  model_ = build_routed_backbone(env, routers_);
  ANVIL_CHECK(model_->drllm_routers() != nullptr, config.source, ": router.kind: drllm built no Dr.LLM routers");
  layers_ = model_->routers()->layers;
  trunk_ = std::make_unique<TransformerStage>(*model_);
  const int ignore = static_cast<int>(config.training.ignore_index);
  stage_ = std::make_unique<DrLLMStage>(*model_, *trunk_, config.router.focal_gamma);
  loss_ = std::make_unique<DrLLMLoss>(*model_, ignore);
  search_pipeline_ =
      std::make_unique<PipelineExecutor>(*trunk_, env.pp, parse_pipe_schedule(config.parallel.pp_schedule));
  row_loss_ = std::make_unique<DrLLMRowLoss>(*model_, ignore);
  DrLLMLabelSettings settings{layers_, config.router.search_budget, kDrLLMLossTolerance};
  // tp ranks and pp stages search alike: one of them writes.
  const bool writer = (env.layout.tp == nullptr || env.layout.tp->rank() == 0) && (env.pp == nullptr || env.pp->rank() == 0);
  const int rank = env.data_group ? env.data_group->rank() : 0;
  labels_ = std::make_unique<DrLLMLabelStore>(config.run.out_dir + "/drllm_labels",
                                              writer ? "dp" + std::to_string(rank) + ".bin" : "", settings);
}

std::vector<double> DrLLMTask::path_losses(const LMMicroBatch& micro, const StepContext& context,
                                           const std::vector<int64_t>& rows,
                                           const std::vector<std::vector<int32_t>>& paths) {
  const int64_t R = static_cast<int64_t>(rows.size()), L = model_->config().num_hidden_layers;
  std::shared_ptr<StepContext> ctx = context_rows(context, rows);
  Tensor actions = Tensor::full({R, L}, 1.0, DType::I32);
  for (int64_t r = 0; r < R; ++r)
    for (size_t j = 0; j < layers_.size(); ++j) actions.data<int32_t>()[r * L + layers_[j]] = paths[r][j];
  ctx->layer_actions = actions;
  // Forward only through the pipeline (every stage calls this alike); the last stage's losses are shared.
  trunk_->set_inputs({gather_rows(micro.ids, rows)}, {std::move(ctx)});
  row_loss_->set_targets(gather_rows(micro.targets, rows));
  search_pipeline_->evaluate(1, *row_loss_);
  std::vector<double> out = row_loss_->take();
  out.resize(static_cast<size_t>(R), 0.0);
  if (env_.pp) out = all_reduce_sum(*env_.pp, out);
  return out;
}

Tensor DrLLMTask::label_actions(const Batch& batch, const LMMicroBatch& micro,
                                const std::shared_ptr<StepContext>& context) {
  const Tensor ids = batch.ids.to(Device::cpu()).contiguous(), targets = batch.targets.to(Device::cpu()).contiguous();
  const Tensor segments =
      batch.segment_ids.defined() ? batch.segment_ids.to(Device::cpu()).contiguous() : Tensor();
  const int64_t B = ids.size(0), T = ids.size(1), L = model_->config().num_hidden_layers;
  const int64_t n = static_cast<int64_t>(layers_.size());
  std::vector<std::vector<int32_t>> paths(static_cast<size_t>(B));
  std::vector<uint64_t> keys(static_cast<size_t>(B));
  std::vector<int64_t> missing;
  for (int64_t b = 0; b < B; ++b) {
    keys[b] = drllm_row_key(ids.data<int32_t>() + b * T, targets.data<int32_t>() + b * T,
                            segments.defined() ? segments.data<int32_t>() + b * T : nullptr, T);
    if (const std::vector<int32_t>* known = labels_->find(keys[b])) paths[b] = *known;
    else missing.push_back(b);
  }
  if (!missing.empty()) {
    DrLLMSearchOptions options;
    options.budget = env_.config->router.search_budget;
    options.tolerance = kDrLLMLossTolerance;
    const DrLLMPathEvaluator evaluate = [&](const std::vector<int64_t>& which,
                                            const std::vector<std::vector<int32_t>>& candidates) {
      std::vector<int64_t> rows;
      for (int64_t i : which) rows.push_back(missing[static_cast<size_t>(i)]);
      return path_losses(micro, *context, rows, candidates);
    };
    const DrLLMSearchResult found = search_drllm_paths(static_cast<int64_t>(missing.size()), n, evaluate, options);
    for (size_t i = 0; i < missing.size(); ++i) {
      paths[missing[i]] = found.paths[i];
      labels_->add(keys[missing[i]], found.paths[i]);
    }
    searched_ += static_cast<double>(missing.size());
  }
  Tensor out = Tensor::full({B, L}, 1.0, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) out.data<int32_t>()[b * L + layers_[j]] = paths[b][j];
  return out;
}

PipelineLoss& DrLLMTask::prepare(const std::vector<Batch>& batches, bool training) {
  LMStepInputs in = make_lm_step(env_, batches, training, model_->config().max_position_embeddings);
  const size_t M = batches.size();
  for (auto& ctx : in.contexts)
    if (!ctx) ctx = std::make_shared<StepContext>();  // the routed layers record their inputs here
  // Training: each row's label path, the step's class counts and each global micro-batch's units.
  std::vector<double> totals(kBlockActions + M, 0.0);
  if (training) {
    searched_ = 0;
    const int64_t L = model_->config().num_hidden_layers;
    for (size_t m = 0; m < M; ++m) {
      Tensor actions = label_actions(batches[m], in.micro[m], in.contexts[m]);
      const int64_t B = actions.size(0);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t l : layers_) totals[actions.data<int32_t>()[b * L + l]] += 1;
      totals[kBlockActions + m] = static_cast<double>(B * static_cast<int64_t>(layers_.size()));
      in.contexts[m]->layer_actions = std::move(actions);
    }
    if (env_.data_group) totals = all_reduce_sum(*env_.data_group, totals);
  }
  double alpha[kBlockActions] = {1, 1, 1};
  if (training) drllm_class_alpha(totals.data(), alpha);
  std::vector<double> units(totals.begin() + kBlockActions, totals.end());
  std::vector<float> loss_scales;
  for (const LMMicroBatch& mb : in.micro) loss_scales.push_back(mb.loss_scale);
  trunk_->set_inputs(in.ids, in.contexts);
  stage_->set_micro_batches(in.contexts, training, alpha, units, std::move(loss_scales));
  loss_->set_micro_batches(in.micro, in.contexts, training, std::move(units));
  return *loss_;
}

std::vector<std::pair<std::string, double>> DrLLMTask::metrics(bool training) {
  const DrLLMStageSums& r = stage_->sums();
  const DrLLMPathSums& p = loss_->sums();
  // Each stage's routers and the last stage's path: summed over pp, then over the replicas.
  std::vector<double> v = {r.focal, r.units, r.correct, r.router_passes, p.sequences, p.label_passes,
                           p.path_loss, p.path_tokens};
  if (env_.pp) v = all_reduce_sum(*env_.pp, v);
  v.push_back(searched_);  // every stage searched the same rows
  if (env_.data_group) v = all_reduce_sum(*env_.data_group, v);
  const double L = static_cast<double>(model_->config().num_hidden_layers);
  // The unrouted layers run once each.
  const double passes = v[3] + v[4] * (L - static_cast<double>(layers_.size()));
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  if (!training) return {{"layers", ratio(passes, v[4])}};
  return {{"router_accuracy", ratio(v[2], v[1])}, {"label_layers", ratio(v[5], v[4])},
          {"router_layers", ratio(passes, v[4])},   {"path_loss", ratio(v[6], v[7])},
          {"searched", v[8]}};
}

}  // namespace anvil
