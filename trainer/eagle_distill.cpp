#include "trainer/eagle_distill.h"

#include "trainer/lm_task.h"
#include "trainer/load_model.h"

namespace anvil {

void EagleStage::set_inputs(std::vector<Tensor> ids, std::vector<EagleTargetStates>* states) {
  ids_ = std::move(ids);
  states_ = states;
  caches_.clear();
}

Shape EagleStage::input_shape(int m) const {
  ANVIL_FAIL("EagleStage: the EAGLE drafter is one pipeline stage — it receives nothing (micro-batch ", m, ")");
}

Tensor EagleStage::forward(int m, const Tensor&, bool for_backward) {
  Cache scratch;
  Cache& c = for_backward ? caches_[m] : scratch;
  return drafter_.forward_train(ids_.at(m), states_->at(m).taps, steps_, c);
}

Tensor EagleStage::backward(int m, const Tensor& dy) {
  auto it = caches_.find(m);
  ANVIL_CHECK(it != caches_.end(), "EagleStage: backward of micro-batch ", m, " without its forward");
  drafter_.backward_train(dy, it->second);
  caches_.erase(it);
  (*states_)[m] = EagleTargetStates();  // the target's states of m are read for the last time
  return Tensor();
}

size_t EagleStage::saved_bytes() const {
  size_t bytes = 0;
  for (const auto& [m, c] : caches_) bytes += c.bytes();
  return bytes;
}

EagleLoss::EagleLoss(EagleDrafter& drafter, const DistillSpec& spec, int64_t steps, bool ce, int ignore_index)
    : drafter_(drafter),
      divergence_(spec, drafter.body().tensor_parallel(), drafter.body().vocab_start(),
                  drafter.body().config().vocab_size, nullptr),
      steps_(steps),
      ce_(ce),
      ignore_index_(ignore_index) {}

void EagleLoss::set_micro_batches(const std::vector<LMMicroBatch>& micro_batches, std::vector<int64_t> counts,
                                  std::vector<EagleTargetStates>* states) {
  micro_ = micro_batches;
  counts_ = std::move(counts);
  states_ = states;
  caches_.clear();
  acceptance_sum_ = scored_tokens_ = 0;
}

PipelineLoss::Value EagleLoss::forward(int m, const Tensor& output, bool for_backward) {
  TransformerLM& body = drafter_.body();
  const LMMicroBatch& mb = micro_.at(m);
  Cache scratch;
  Cache& c = for_backward ? caches_[m] : scratch;
  const Tensor logits = body.forward_head(output, c.child(0));
  const Tensor labels = EagleDrafter::step_labels(mb.targets, steps_, ignore_index_);
  Tensor teacher;
  {
    Cache target_head;  // frozen: nothing is kept
    const Tensor target_logits = drafter_.target().forward_head(states_->at(m).hidden, target_head);
    teacher = EagleDrafter::step_rows(target_logits, steps_);
  }
  DistillationLoss::Result scored;
  double total;  // Σ over every step's scored tokens
  if (ce_) {
    Cache measured;
    scored = divergence_.forward(logits, teacher, labels, measured, ignore_index_, false);
    total = static_cast<double>(body.cross_entropy().forward(logits, labels, c, ignore_index_)) * scored.tokens;
  } else {
    scored = divergence_.forward(logits, teacher, labels, c, ignore_index_, for_backward);
    total = static_cast<double>(scored.loss) * scored.tokens;
  }
  acceptance_sum_ += scored.acceptance_sum;
  scored_tokens_ += scored.tokens;
  const double count = static_cast<double>(counts_.at(m));
  const double divisor = mb.loss_tokens >= 0 ? static_cast<double>(mb.loss_tokens) : count;
  Value v;
  v.loss = count > 0 ? static_cast<float>(total / count) : 0.0f;
  v.weight = count;
  v.objective = divisor > 0 ? mb.loss_scale * total / divisor : 0.0;
  return v;
}

Tensor EagleLoss::backward(int m) {
  auto it = caches_.find(m);
  ANVIL_CHECK(it != caches_.end(), "EagleLoss: backward of micro-batch ", m, " without its forward");
  Cache& c = it->second;
  const LMMicroBatch& mb = micro_.at(m);
  // The objective's normaliser: the micro-batch's token count (over dp when data-parallel).
  const int64_t divisor = mb.loss_tokens >= 0 ? mb.loss_tokens : counts_.at(m);
  Tensor dx;
  {
    const Tensor dlogits = ce_ ? drafter_.body().cross_entropy().backward(c, mb.loss_scale, divisor)
                               : divergence_.backward(c, mb.loss_scale, divisor);
    dx = drafter_.body().backward_head(dlogits, c.child(0));
  }
  caches_.erase(it);
  return dx;
}

size_t EagleLoss::saved_bytes() const {
  size_t bytes = 0;
  for (const auto& [m, c] : caches_) bytes += c.bytes();
  return bytes;
}

EagleDistill::EagleDistill(const TaskEnv& env) : env_(env) {
  const RunConfig& config = *env.config;
  const DistillSection& d = config.distill;
  ANVIL_CHECK(!env.layout.sp && env.layout.stages == 1, config.source, ": distill.drafter: eagle is not split over "
              "sequences or pipeline stages yet (its training-time-test steps attend across the whole window, and the "
              "drafter reads three target layers at once) — set parallel.sp and parallel.pp to 1 (dp and tp work)");
  ANVIL_CHECK(config.model.init_from.empty(), config.source, ": model.init_from does not apply to distill.drafter: "
              "eagle (the drafter's shape follows the target) — remove it; resume a run with checkpoint.resume");
  LoadModelOptions options;
  options.device = env.device;
  options.compute = env.compute;
  options.layout = env.layout;  // sharded by tp as the drafter's block, embedding and head
  target_ = load_model(d.target, options).model;  // frozen: weights only
  const int64_t L = target_->config().num_hidden_layers;
  drafter_ = std::make_unique<EagleDrafter>(
      *target_, d.eagle_layers.empty() ? EagleDrafter::default_layers(L) : d.eagle_layers);
  drafter_->init_weights(static_cast<uint64_t>(config.run.seed));
  stage_ = std::make_unique<EagleStage>(*drafter_, d.ttt_steps);
  DistillSpec spec;
  spec.kind = d.loss == "ce" ? DivergenceKind::ForwardKL : parse_divergence(d.loss);
  spec.temperature = d.temperature;
  spec.top_k = d.top_k;
  spec.top_p = d.top_p;
  loss_ = std::make_unique<EagleLoss>(*drafter_, spec, d.ttt_steps, d.loss == "ce",
                                      static_cast<int>(config.training.ignore_index));
}

PipelineLoss& EagleDistill::prepare(const std::vector<Batch>& batches, bool training) {
  LMStepInputs in = make_lm_step(env_, batches, training, target_->config().max_position_embeddings);
  for (const auto& ctx : in.contexts)
    ANVIL_CHECK(!ctx || (!ctx->mask.has_documents() && !ctx->mask.has_groups()), "distill.drafter: eagle trains on "
                "plain windows — set data.packing: none (packed documents are not supported by the EAGLE drafter yet)");
  // The target once per micro-batch, forward only: the tapped layers and the final hidden state.
  states_.assign(in.ids.size(), EagleTargetStates());
  for (size_t m = 0; m < in.ids.size(); ++m) {
    Cache scratch;
    HiddenTaps taps;
    taps.layers = drafter_->layers();
    states_[m].hidden = target_->forward_hidden(in.ids[m], scratch, &taps);
    states_[m].taps = std::move(taps.states);
  }
  stage_->set_inputs(std::move(in.ids), &states_);
  loss_->set_micro_batches(in.micro, std::move(in.tokens), &states_);
  return *loss_;
}

}  // namespace anvil
