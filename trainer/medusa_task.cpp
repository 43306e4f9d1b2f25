#include "trainer/medusa_task.h"

#include <cmath>

#include "kernels/elementwise.h"
#include "parallel/data_parallel.h"
#include "parallel/pipeline_schedule.h"
#include "trainer/lm_task.h"
#include "trainer/load_model.h"

namespace anvil {

Tensor MedusaStage::forward(int m, const Tensor& input, bool for_backward) {
  return trunk_.forward(m, input, for_backward && trunk_trains_);  // frozen: nothing saved
}

Tensor MedusaStage::backward(int m, const Tensor& dy) {
  if (!trunk_trains_) return Tensor();  // forward saved nothing; no gradient leaves the heads
  return trunk_.backward(m, dy);
}

void MedusaStage::finish_backward(Communicator* pp) {
  if (trunk_trains_) trunk_.finish_backward(pp);
}

Tensor medusa_head_targets(const Batch& batch, int64_t k, int32_t ignore_index) {
  const Tensor targets = batch.targets.to(Device::cpu()).contiguous();
  const Tensor segments = batch.segment_ids.defined() ? batch.segment_ids.to(Device::cpu()).contiguous() : Tensor();
  const int64_t B = targets.size(0), T = targets.size(1), ahead = k + 1;
  Tensor out = Tensor::empty({B, T}, DType::I32);
  const int32_t* tp = targets.data<int32_t>();
  const int32_t* sp = segments.defined() ? segments.data<int32_t>() : nullptr;
  int32_t* op = out.data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t src = t + ahead;  // position whose LM target is head k's target at t
      const bool inside = src < T && (!sp || sp[b * T + src] == sp[b * T + t]);
      op[b * T + t] = inside ? tp[b * T + src] : ignore_index;
    }
  return out;
}

double medusa_schedule_factor(const MedusaSection& spec, int64_t step, int64_t total_steps) {
  const int64_t ramp = spec.schedule_steps > 0 ? spec.schedule_steps : total_steps;
  const double x = ramp > 0 ? std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(ramp)) : 1.0;
  if (spec.schedule == "linear") return x;
  if (spec.schedule == "sine") return std::sin(0.5 * M_PI * x);
  return 1.0;  // constant
}

double medusa_head_weight(const MedusaSection& spec, int64_t k, int64_t step, int64_t total_steps) {
  return spec.heads_coefficient * std::pow(spec.decay, static_cast<double>(k)) *
         medusa_schedule_factor(spec, step, total_steps);
}

MedusaLoss::MedusaLoss(TransformerLM& model, MedusaHeads* heads, const MedusaSection& spec, TransformerLM* teacher,
                       int ignore_index)
    : model_(model),
      heads_(heads),
      spec_(spec),
      teacher_(teacher),
      divergence_(DistillSpec{}, model.layout().tp, model.vocab_start(), model.config().vocab_size, model.layout().sp),
      ignore_index_(ignore_index) {}

void MedusaLoss::set_micro_batches(const std::vector<LMMicroBatch>& micro_batches, std::vector<int64_t> counts,
                                   std::vector<std::vector<Tensor>> head_targets, std::vector<double> weights,
                                   bool backbone, bool trains, std::vector<Tensor> teacher_hidden,
                                   bool backbone_in_objective) {
  ANVIL_CHECK(dhidden_.empty(), "MedusaLoss: new micro-batches while ", dhidden_.size(), " wait for their backward");
  micro_ = micro_batches;
  counts_ = std::move(counts);
  head_targets_ = std::move(head_targets);
  weights_ = std::move(weights);
  backbone_ = backbone;
  trains_ = trains;
  teacher_hidden_ = std::move(teacher_hidden);
  backbone_in_objective_ = backbone_in_objective;
  sums_ = MedusaSums{};
  sums_.head_loss.assign(weights_.size(), 0.0);
  sums_.head_tokens.assign(weights_.size(), 0.0);
}

PipelineLoss::Value MedusaLoss::forward(int m, const Tensor& hidden, bool for_backward) {
  ANVIL_CHECK(heads_ != nullptr, "MedusaLoss: the heads live on the last pipeline stage only");
  const LMMicroBatch& mb = micro_.at(m);
  const int64_t count = counts_.at(m);
  // Every term is divided by the LM's target count over the data group (the lm task's normaliser).
  const int64_t divisor = mb.loss_tokens >= 0 ? mb.loss_tokens : count;
  const CrossEntropyLoss ce = model_.cross_entropy();
  double objective_sum = 0;  // Σ over terms of weight × summed token losses, on this rank
  Tensor dh;
  auto add_grad = [&](const Tensor& d) {
    if (!d.defined()) return;
    if (dh.defined()) kernels::add_inplace(dh, d);
    else dh = d;
  };
  for (int64_t k = 0; k < heads_->heads(); ++k) {
    Cache c;
    const Tensor logits = heads_->forward_head(k, hidden, c.child(0));
    const float mean = ce.forward(logits, head_targets_.at(m).at(k), c, ignore_index_);
    const double n = CrossEntropyLoss::token_count(c);
    sums_.head_loss[k] += static_cast<double>(mean) * n;
    sums_.head_tokens[k] += n;
    objective_sum += weights_[k] * static_cast<double>(mean) * n;
    if (for_backward) {
      const Tensor dlogits = ce.backward(c, mb.loss_scale * static_cast<float>(weights_[k]), divisor);
      add_grad(heads_->backward_head(k, dlogits, c.child(0), trains_));
    }
  }
  if (backbone_) {
    Cache c;
    Tensor logits = model_.forward_head(hidden, c.child(0));
    const bool distill = !teacher_hidden_.empty();
    double mean = 0, n = 0;
    if (distill) {
      Tensor teacher;
      {
        Cache scratch;
        teacher = teacher_->forward_head(teacher_hidden_.at(m), scratch);
        teacher_hidden_[m] = Tensor();  // used once
      }
      const DistillationLoss::Result r = divergence_.forward(logits, teacher, mb.targets, c, ignore_index_, for_backward);
      mean = r.loss;
      n = r.tokens;
    } else {
      mean = ce.forward(logits, mb.targets, c, ignore_index_);
      n = CrossEntropyLoss::token_count(c);
    }
    sums_.backbone_loss += mean * n;
    sums_.backbone_tokens += n;
    if (backbone_in_objective_) objective_sum += mean * n;
    if (for_backward && trains_) {
      const Tensor dlogits = distill ? divergence_.backward(c, mb.loss_scale, divisor)
                                     : ce.backward(c, mb.loss_scale, divisor);
      add_grad(model_.backward_head(dlogits, c.child(0)));
    }
  }
  if (for_backward) dhidden_[m] = trains_ ? dh : Tensor();
  Value v;
  v.weight = static_cast<double>(count);
  v.loss = count > 0 ? static_cast<float>(objective_sum / static_cast<double>(count)) : 0.0f;
  v.objective = divisor > 0 ? mb.loss_scale * objective_sum / static_cast<double>(divisor) : 0.0;
  return v;
}

Tensor MedusaLoss::backward(int m) {
  auto it = dhidden_.find(m);
  ANVIL_CHECK(it != dhidden_.end(), "MedusaLoss: backward of micro-batch ", m, " before its forward");
  Tensor dh = std::move(it->second);
  dhidden_.erase(it);
  return dh;
}

size_t MedusaLoss::saved_bytes() const {
  size_t bytes = 0;
  for (const auto& [m, t] : dhidden_)
    if (t.defined()) bytes += t.nbytes();
  return bytes;
}

void MedusaTask::build(const TaskEnv& env) {
  env_ = env;
  const RunConfig& config = *env.config;
  const MedusaSection& spec = config.medusa;
  ANVIL_CHECK(!config.model.init_from.empty(), config.source, ": task.name: medusa trains heads on a pretrained base "
              "— set model.init_from to an anvil run or checkpoint directory, or a Hugging Face directory");
  ANVIL_CHECK(env.layout.sp == nullptr, config.source, ": task.name: medusa is not sequence-parallel (head k's target "
              "lies k + 1 positions ahead, across sequence slices) — set parallel.sp: 1; dp, tp and pp work");
  if (spec.stage == 1) {
    FrozenParamScope frozen;  // Medusa-1: the base costs its weights only
    model_ = build_trainable_lm(env);
  } else {
    model_ = build_trainable_lm(env);
  }
  if (model_->is_last_stage()) {
    const ModelConfig& mc = model_->config();
    heads_ = std::make_unique<MedusaHeads>(spec.num_heads, spec.num_layers, mc.hidden_size, mc.vocab_size, env.layout.tp);
    // The model's init rules, Philox keyed by (run.seed, name): layout-independent, like the model's.
    const float std = static_cast<float>(mc.initializer_range);
    init_params(heads_->params(), static_cast<uint64_t>(config.run.seed), std, std);
    if (spec.copy_lm_head) heads_->copy_lm_head(*model_);
    model_->attach(*heads_);  // moved, zeroed and stepped with the model
  }
  trunk_ = std::make_unique<TransformerStage>(*model_);
  stage_ = std::make_unique<MedusaStage>(*trunk_);
  if (spec.stage == 2 && spec.backbone_loss == "self_distill") {
    LoadModelOptions options;
    options.device = env.device;
    options.compute = env.compute;
    options.layout = env.layout;  // split like the model: the same tp and pipeline stage
    teacher_ = load_model(config.model.init_from, options).model;
    teacher_stage_ = std::make_unique<TransformerStage>(*teacher_);
    teacher_pipeline_ =
        std::make_unique<PipelineExecutor>(*teacher_stage_, env.pp, parse_pipe_schedule(config.parallel.pp_schedule));
  }
  loss_ = std::make_unique<MedusaLoss>(*model_, heads_.get(), spec, teacher_.get(),
                                       static_cast<int>(config.training.ignore_index));
}

std::vector<Param*> MedusaTask::checkpoint_params() {
  if (env_.config->medusa.stage == 2) return model_->params();  // the base's params and the attached heads'
  return heads_ ? heads_->params() : std::vector<Param*>{};
}

PipelineLoss& MedusaTask::prepare(const std::vector<Batch>& batches, bool training) {
  const RunConfig& config = *env_.config;
  const MedusaSection& spec = config.medusa;
  const bool joint = spec.stage == 2;
  const bool trunk_trains = training && joint && step_ >= spec.warmup_steps;
  stage_->set_trunk_trains(trunk_trains);
  if (training && joint) {  // heads at lr x lr_multiplier; the backbone held still during the warm-up
    for (Param* p : model_->params()) p->lr_scale = trunk_trains ? 1.0 : 0.0;
    if (heads_)
      for (Param* p : heads_->params()) p->lr_scale = spec.lr_multiplier;
  }
  const int32_t ignore = static_cast<int32_t>(config.training.ignore_index);
  const int M = static_cast<int>(batches.size());
  LMStepInputs in = make_lm_step(env_, batches, training, model_->config().max_position_embeddings);
  std::vector<std::vector<Tensor>> head_targets(M);
  std::vector<double> weights;
  heads_weight_ = training ? medusa_schedule_factor(spec, step_, config.training.steps) : 1.0;  // s = 1 in evaluation
  for (int64_t k = 0; k < spec.num_heads; ++k)
    weights.push_back(spec.heads_coefficient * std::pow(spec.decay, static_cast<double>(k)) * heads_weight_);
  if (model_->is_last_stage())
    for (int m = 0; m < M; ++m)
      for (int64_t k = 0; k < spec.num_heads; ++k)
        head_targets[m].push_back(medusa_head_targets(batches[m], k, ignore).to(env_.device));
  // The backbone term: trained in stage 2 once the warm-up is over; measured (cross-entropy) in evaluation.
  const bool backbone = !training || trunk_trains;
  std::vector<Tensor> teacher_hidden;
  if (training && backbone && teacher_) {  // self-distillation: the original model's hidden states, forward only
    std::vector<std::shared_ptr<StepContext>> contexts = in.contexts;
    teacher_stage_->set_inputs(in.ids, std::move(contexts));
    HiddenCapture capture(M);
    teacher_pipeline_->evaluate(M, capture);
    teacher_hidden = capture.take();
  }
  trunk_->set_inputs(std::move(in.ids), std::move(in.contexts));
  loss_->set_micro_batches(in.micro, std::move(in.tokens), std::move(head_targets), std::move(weights), backbone,
                           trunk_trains, std::move(teacher_hidden), /*backbone_in_objective=*/joint);
  return *loss_;
}

std::vector<std::pair<std::string, double>> MedusaTask::metrics(bool training) {
  const int64_t K = env_.config->medusa.num_heads;
  const MedusaSums& s = loss_->sums();
  std::vector<double> sums(2 * K + 2, 0.0);
  if (model_->is_last_stage()) {
    for (int64_t k = 0; k < K; ++k) {
      sums[k] = s.head_loss[k];
      sums[K + k] = s.head_tokens[k];
    }
    sums[2 * K] = s.backbone_loss;
    sums[2 * K + 1] = s.backbone_tokens;
  }
  if (env_.pp) sums = all_reduce_sum(*env_.pp, sums);  // only the last stage scored
  if (env_.data_group) sums = all_reduce_sum(*env_.data_group, sums);
  std::vector<std::pair<std::string, double>> out;
  for (int64_t k = 0; k < K; ++k)
    out.push_back({"head" + std::to_string(k) + "_loss", sums[K + k] > 0 ? sums[k] / sums[K + k] : 0.0});
  if (sums[2 * K + 1] > 0) out.push_back({"backbone_loss", sums[2 * K] / sums[2 * K + 1]});
  if (training) out.push_back({"heads_weight", heads_weight_});
  return out;
}

}  // namespace anvil
