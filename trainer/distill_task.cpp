#include "trainer/distill_task.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "data/tokenizer.h"
#include "eval/speculative.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "models/hf_convert.h"
#include "models/layout_checks.h"
#include "parallel/data_parallel.h"
#include "parallel/pipeline_schedule.h"
#include "trainer/batch_context.h"
#include "trainer/checkpoint.h"
#include "trainer/lm_task.h"
#include "trainer/lora.h"
#include "trainer/load_model.h"
#include "trainer/on_policy.h"
#include "trainer/parallel_spec_rows.h"
#include "trainer/trainer.h"

namespace anvil {

namespace fs = std::filesystem;

namespace {

// What the target is, read before its weights: its architecture and its tokenizer (when known).
struct TargetDescription {
  ModelConfig model;
  std::string tokenizer;  // tokenizer.json the target was trained with; "" when unknown
};

TargetDescription describe_target(const std::string& path) {
  TargetDescription d;
  std::error_code ec;
  if (fs::is_regular_file(fs::path(path) / "config.json", ec) &&
      !fs::is_regular_file(fs::path(path) / kCheckpointFile, ec)) {
    d.model = read_hf_config(path);
    const fs::path tokenizer = fs::path(path) / "tokenizer.json";
    if (fs::is_regular_file(tokenizer, ec)) d.tokenizer = tokenizer.string();
    return d;
  }
  const RunConfig config = config_from_checkpoint(path);
  d.model = config.model;
  if (fs::is_regular_file(config.tokenizer.path, ec)) d.tokenizer = config.tokenizer.path;
  return d;
}

// Every check a bad target fails, before its weights are read; each error names distill.target.
void check_target(const RunConfig& config, const TargetDescription& target) {
  const std::string where = "distill.target " + config.distill.target;
  const ModelConfig& drafter = config.model;
  ANVIL_CHECK(target.model.vocab_size == drafter.vocab_size, where, " has a vocabulary of ", target.model.vocab_size,
              " tokens but the drafter's is ", drafter.vocab_size, " — drafter and target must share the tokenizer: "
              "train the drafter with the target's tokenizer.json (tokenizer.path) and model.vocab_size: auto");
  if (!target.tokenizer.empty()) {
    const std::string ours = Tokenizer::load(config.tokenizer.path).hash_hex();
    ANVIL_CHECK(Tokenizer::load(target.tokenizer).hash_hex() == ours, where, " was trained with the tokenizer ",
                target.tokenizer, ", which differs from tokenizer.path ", config.tokenizer.path,
                " — drafter and target must share the tokenizer: set tokenizer.path to ", target.tokenizer);
  }
  ANVIL_CHECK(config.data.seq_len <= target.model.max_position_embeddings, where, " reads at most ",
              target.model.max_position_embeddings, " positions but data.seq_len = ", config.data.seq_len,
              " — lower data.seq_len to at most ", target.model.max_position_embeddings);
  try {  // the target is split like the drafter: the same degrees must fit its heads, layers and vocabulary
    validate_layout(grid_dims(config.parallel), target.model);
  } catch (const Error& e) {
    ANVIL_FAIL(where, " cannot be split like the drafter: ", e.what());
  }
}

}  // namespace

DistillPipelineLoss::DistillPipelineLoss(TransformerStage& drafter, TransformerLM& target, const DistillSpec& spec,
                                         bool ce, double ce_weight, int ignore_index)
    : drafter_(drafter),
      target_(target),
      divergence_(spec, drafter.model().layout().tp, drafter.model().vocab_start(), drafter.model().config().vocab_size,
                  drafter.model().layout().sp),
      ce_(ce),
      ce_weight_(static_cast<float>(ce_weight)),
      ignore_index_(ignore_index) {}

void DistillPipelineLoss::set_micro_batches(const std::vector<LMMicroBatch>& micro_batches,
                                            std::vector<int64_t> counts, std::vector<Tensor> target_hidden) {
  micro_ = micro_batches;
  counts_ = std::move(counts);
  target_hidden_ = std::move(target_hidden);
  acceptance_sum_ = scored_tokens_ = ce_sum_ = 0;
}

PipelineLoss::Value DistillPipelineLoss::forward(int m, const Tensor& hidden, bool for_backward) {
  TransformerLM& model = drafter_.model();
  const LMMicroBatch& mb = micro_.at(m);
  Cache scratch;
  Cache& c = for_backward ? model.head_cache(drafter_.cache(m)) : scratch;
  const Tensor logits = model.forward_head(hidden, c.child(0));
  Tensor teacher;
  {
    Cache target_head;  // frozen: nothing is kept for a backward
    ANVIL_CHECK(target_hidden_.at(m).defined(), "distill: no target hidden state for micro-batch ", m);
    Tensor source = target_hidden_[m];
    if (!teacher_slots_.empty()) {  // ParallelSpec: each drafter slot is scored at the real slot predicting its token
      const int64_t H = source.size(2);
      Tensor rows = empty_like(source, {teacher_slots_.at(m).numel(), H});
      kernels::embedding_forward(teacher_slots_[m], source.contiguous().view({-1, H}), rows);
      source = rows.view({hidden.size(0), hidden.size(1), H});
    }
    teacher = target_.forward_head(source, target_head);
    target_hidden_[m] = Tensor();  // used once; its memory goes with it
  }
  float loss = 0;  // the drafter's loss, as reported
  DistillationLoss::Result scored;
  if (ce_) {  // the data's labels are the objective; the target's distribution is measured only
    Cache measured;
    scored = divergence_.forward(logits, teacher, mb.targets, measured, ignore_index_, false);
    loss = model.cross_entropy().forward(logits, mb.targets, c, ignore_index_);
  } else {
    float ce = 0;
    if (ce_weight_ > 0)  // LREC's CE term, on its own copy: the divergence overwrites the logits with its gradient
      ce = model.cross_entropy().forward(for_backward ? logits.clone() : logits, mb.targets, c.child(1), ignore_index_);
    scored = divergence_.forward(logits, teacher, mb.targets, c, ignore_index_, for_backward);
    loss = scored.loss + ce_weight_ * ce;
    ce_sum_ += static_cast<double>(ce) * scored.tokens;
  }
  acceptance_sum_ += scored.acceptance_sum;
  scored_tokens_ += scored.tokens;
  return token_mean_loss(loss, mb, counts_.at(m));  // weighed as CausalLMLoss weighs its loss
}

Tensor DistillPipelineLoss::backward(int m) {
  TransformerLM& model = drafter_.model();
  const LMMicroBatch& mb = micro_.at(m);
  Cache& c = model.head_cache(drafter_.cache(m));
  Tensor dx;
  {
    Tensor dlogits = ce_ ? model.cross_entropy().backward(c, mb.loss_scale, mb.loss_tokens)
                         : divergence_.backward(c, mb.loss_scale, mb.loss_tokens);
    if (!ce_ && ce_weight_ > 0)
      kernels::add_inplace(dlogits,
                           model.cross_entropy().backward(c.child(1), mb.loss_scale * ce_weight_, mb.loss_tokens));
    dx = model.backward_head(dlogits, c.child(0));
    c.clear();
  }
  return dx;
}

bool DistillTask::loss_is_cross_entropy() const { return env_.config->distill.loss == "ce"; }

std::vector<Param*> DistillTask::checkpoint_params() {
  if (eagle_) return eagle_->own_params();
  return env_.config->lora.enabled() ? lora_checkpoint_params(*drafter_, adapters_) : drafter_->params();
}

std::vector<Param*> DistillTask::tunable_params() {
  if (eagle_) return eagle_->own_params();
  return env_.config->lora.enabled() ? adapters_ : drafter_->params();
}

void DistillTask::build(const TaskEnv& env) {
  env_ = env;
  const RunConfig& config = *env.config;
  const DistillSection& d = config.distill;
  ANVIL_CHECK(d.drafter == "standalone" || d.drafter == "parallelspec" || d.drafter == "eagle", "distill.drafter: ",
              d.drafter, " is not a drafter kind — use standalone, parallelspec or eagle");
  ANVIL_CHECK(!d.target.empty(), config.source, ": task.name: distill needs distill.target (the frozen target: an "
              "anvil checkpoint or run directory, or a Hugging Face directory)");
  check_target(config, describe_target(d.target));
  if (d.drafter == "eagle") {
    eagle_ = std::make_unique<EagleDistill>(env);
    return;
  }
  drafter_ = build_adaptable_lm(env, adapters_);  // LREC: the base frozen, quantized and adapted
  if ((masks_ = parallel_spec_masks(config)) > 0) {
    ANVIL_CHECK(env.layout.sp == nullptr, "distill.drafter parallelspec: the mask groups' attention is not sequence-"
                "parallel — set parallel.sp: 1 (tp, pp and dp work)");
    ANVIL_CHECK(config.data.packing == "none", "distill.drafter parallelspec: packed documents are not supported "
                "(the masks follow the window's real tokens) — set data.packing: none");
    add_parallel_spec_masks(*drafter_, config);
    anchors_ = parallel_spec_anchor_count(config.data.seq_len, masks_, d.anchors_per_sequence,
                                          drafter_->config().max_position_embeddings);
  }
  stage_ = std::make_unique<TransformerStage>(*drafter_);
  LoadModelOptions options;
  options.device = env.device;
  options.compute = env.compute;
  options.layout = env.layout;  // sharded as the drafter: the same tp, sp and pipeline stage
  target_ = load_model(d.target, options).model;
  target_stage_ = std::make_unique<TransformerStage>(*target_);
  target_pipeline_ =
      std::make_unique<PipelineExecutor>(*target_stage_, env.pp, parse_pipe_schedule(config.parallel.pp_schedule));
  DistillSpec spec;
  spec.kind = d.loss == "ce" ? DivergenceKind::ForwardKL : parse_divergence(d.loss);
  spec.temperature = d.temperature;
  spec.top_k = d.top_k;
  spec.top_p = d.top_p;
  loss_ = std::make_unique<DistillPipelineLoss>(*stage_, *target_, spec, d.loss == "ce", d.ce_weight,
                                                static_cast<int>(config.training.ignore_index));
}

PipelineLoss& DistillTask::prepare(const std::vector<Batch>& batches, bool training) {
  if (eagle_) return eagle_->prepare(batches, training);
  if (training && env_.config->distill.on_policy > 0) {
    const std::vector<Batch> sampled = with_on_policy_rows(batches);
    return prepare_rows(sampled, training);
  }
  return prepare_rows(batches, training);
}

std::vector<Batch> DistillTask::with_on_policy_rows(const std::vector<Batch>& batches) {
  const RunConfig& config = *env_.config;
  // tp = pp = sp = 1 (config.cpp): the data group is the dp group, and dp rank r holds rows
  // [r·B, (r+1)·B) of each global micro-batch (data/loader.h).
  const int dp_rank = env_.data_group ? env_.data_group->rank() : 0;
  std::vector<Batch> out = batches;
  int64_t sampled = 0;
  for (size_t m = 0; m < batches.size(); ++m) {
    if (!on_policy_micro_batch(config.run.seed, step_, static_cast<int64_t>(m), config.distill.on_policy)) continue;
    const uint32_t first_row = static_cast<uint32_t>(dp_rank * batches[m].ids.size(0));
    out[m] = on_policy_rows(*drafter_, batches[m], on_policy_sampling(config, step_, static_cast<int64_t>(m)),
                            first_row, static_cast<int32_t>(config.training.ignore_index));
    ++sampled;
  }
  on_policy_fraction_ = batches.empty() ? 0.0 : static_cast<double>(sampled) / static_cast<double>(batches.size());
  return out;
}

std::vector<std::pair<std::string, double>> DistillTask::step_metrics() {
  std::vector<std::pair<std::string, double>> metrics = acceptance_metrics();
  if (env_.config->distill.on_policy > 0) metrics.emplace_back("on_policy_fraction", on_policy_fraction_);
  return metrics;
}

PipelineLoss& DistillTask::prepare_rows(const std::vector<Batch>& batches, bool training) {
  const int M = static_cast<int>(batches.size());
  const int64_t max_positions = drafter_->config().max_position_embeddings;
  // ParallelSpec: the drafter reads group-wise rows (windows + masks); the target the windows alone.
  ParallelSpecStep pspec;
  if (masks_ > 0)
    pspec = parallel_spec_step(batches, masks_, anchors_, static_cast<int32_t>(drafter_->config().vocab_size),
                               static_cast<int32_t>(env_.config->training.ignore_index), max_positions, env_.device);
  LMStepInputs in = make_lm_step(env_, masks_ > 0 ? pspec.rows : batches, training, max_positions);
  if (masks_ > 0) in.contexts = pspec.contexts;
  if (training) set_lora_dropout(env_, step_, in);  // a LoRA drafter's dropout draws, as LMTask's
  // The target's trunk over the same micro-batches, forward only: its last stage keeps each final hidden state.
  std::vector<Tensor> ids = in.ids;
  for (int m = 0; m < M && masks_ > 0; ++m) ids[m] = batches[m].ids.to(env_.device);  // the windows alone
  std::vector<std::shared_ptr<StepContext>> contexts(M);
  for (int m = 0; m < M; ++m)
    contexts[m] = make_step_context(batches[m], target_->config().max_position_embeddings, env_.device);
  target_stage_->set_inputs(std::move(ids), std::move(contexts));
  HiddenCapture capture(M);
  target_pipeline_->evaluate(M, capture);
  stage_->set_inputs(std::move(in.ids), std::move(in.contexts));
  loss_->set_micro_batches(in.micro, std::move(in.tokens), capture.take());
  loss_->set_teacher_slots(std::move(pspec.teacher_slots));
  return *loss_;
}

std::vector<std::pair<std::string, double>> DistillTask::acceptance_metrics() {
  std::vector<double> sums = eagle_ ? std::vector<double>{eagle_->acceptance_sum(), eagle_->scored_tokens(), 0.0}
                                    : std::vector<double>{loss_->acceptance_sum(), loss_->scored_tokens(), loss_->ce_sum()};
  if (env_.pp) sums = all_reduce_sum(*env_.pp, sums);  // only the last stage scored
  // Each sp rank holds its group's sums: the ratio over dp x sp is the same as over dp.
  if (env_.data_group) sums = all_reduce_sum(*env_.data_group, sums);
  const double alpha = sums[1] > 0 ? sums[0] / sums[1] : 0.0;
  // Summed in float, the mean may round a hair above 1, where the formula's limit is gamma + 1.
  const double tau = expected_tokens_per_call(std::min(alpha, 1.0), static_cast<int>(env_.config->distill.gamma));
  std::vector<std::pair<std::string, double>> metrics = {{"acceptance", alpha}, {"tau_sim", tau}};
  if (env_.config->distill.ce_weight > 0) metrics.emplace_back("ce", sums[1] > 0 ? sums[2] / sums[1] : 0.0);
  return metrics;
}

}  // namespace anvil
