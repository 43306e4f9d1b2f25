#include "trainer/lm_task.h"

#include <filesystem>

#include "parallel/data_parallel.h"
#include "trainer/batch_context.h"
#include "trainer/checkpoint.h"
#include "trainer/lora.h"
#include "trainer/peft_adapter.h"

namespace anvil {

std::unique_ptr<TransformerLM> build_adaptable_lm(const TaskEnv& env, std::vector<Param*>& adapters) {
  adapters.clear();
  if (!env.config->lora.enabled()) return build_trainable_lm(env);
  std::unique_ptr<TransformerLM> model;
  {
    FrozenParamScope frozen;  // the base costs its weights only
    model = build_trainable_lm(env);
  }
  adapters = adapt_base(*model, *env.config, env.layout.tp, env.pp);
  const CheckpointSection& ck = env.config->checkpoint;
  const bool resuming = ck.resume != "none" && (ck.resume != "auto" || !latest_checkpoint(ck.dir).empty());
  std::error_code ec;
  // A PEFT adapter starts the adapters; a resume's checkpoint replaces them anyway (and the
  // adapter may be gone by then).
  if (!env.config->lora.init_from.empty() && !(resuming && !std::filesystem::exists(env.config->lora.init_from, ec)))
    load_peft_adapter(adapters, *env.config, env.config->lora.init_from);
  return model;
}

void set_lora_dropout(const TaskEnv& env, int64_t step, LMStepInputs& in) {
  if (env.config->lora.dropout <= 0) return;
  const int64_t M = static_cast<int64_t>(in.ids.size());
  const int sp = env.layout.sp ? env.layout.sp->size() : 1;
  for (int64_t m = 0; m < M; ++m) {
    if (!in.contexts[m]) in.contexts[m] = std::make_shared<StepContext>();
    in.contexts[m]->dropout = lora_dropout_key(*env.config, step, m, M, in.ids[m], env.data_group, sp);
  }
}

void LMTask::build(const TaskEnv& env) {
  env_ = env;
  model_ = build_adaptable_lm(env, adapters_);
  stage_ = std::make_unique<TransformerStage>(*model_);
  loss_ = std::make_unique<CausalLMLoss>(*stage_, static_cast<int>(env.config->training.ignore_index));
}

LMStepInputs make_lm_step(const TaskEnv& env, const std::vector<Batch>& batches, bool training,
                          int64_t max_positions) {
  const int ignore = static_cast<int>(env.config->training.ignore_index);
  const int64_t M = static_cast<int64_t>(batches.size());
  LMStepInputs in;
  in.micro.resize(M);
  in.ids.resize(M);
  in.contexts.resize(M);
  in.tokens.resize(M);
  for (int64_t m = 0; m < M; ++m) {
    const Batch& batch = batches[m];
    in.micro[m] = {batch.ids.to(env.device), batch.targets.to(env.device),
                   training ? 1.0f / static_cast<float>(M) : 1.0f, -1};
    in.tokens[m] = count_loss_tokens(batch.targets, ignore);  // on the host copy
    if (training) {
      const int64_t global = env.data_group ? all_reduce_sum(*env.data_group, in.tokens[m]) : in.tokens[m];
      if (env.data_group) in.micro[m].loss_tokens = global;
      in.global_tokens += global;
    }
    in.ids[m] = in.micro[m].ids;
    // Packed documents: their boundaries and restarted positions (null for plain windows).
    in.contexts[m] = make_step_context(batch, max_positions, env.device);
  }
  return in;
}

std::vector<Param*> LMTask::checkpoint_params() {
  return env_.config->lora.enabled() ? lora_checkpoint_params(*model_, adapters_) : model_->params();
}

std::vector<Param*> LMTask::tunable_params() { return env_.config->lora.enabled() ? adapters_ : model_->params(); }

PipelineLoss& LMTask::prepare(const std::vector<Batch>& batches, bool training) {
  LMStepInputs in = make_lm_step(env_, batches, training, model_->config().max_position_embeddings);
  step_loss_tokens_ = in.global_tokens;
  if (training) set_lora_dropout(env_, step_, in);  // the adapters' dropout draws
  stage_->set_inputs(std::move(in.ids), std::move(in.contexts));
  loss_->set_micro_batches(in.micro, std::move(in.tokens));
  return *loss_;
}

void SFTTask::configure_loader(LoaderConfig& loader) const { loader.packing = Packing::Documents; }

void SFTTask::check_data(const RunConfig& config, const TokenStore& store) const {
  ANVIL_CHECK(config.parallel.sp == 1, "task.name: sft packs prompt/response documents with their boundaries, which "
              "Ulysses sequence parallelism cannot attend yet (parallel.sp = ", config.parallel.sp,
              ") — use parallel.sp: 1 (dp, tp and pp work)");
  ANVIL_CHECK(store.has_loss_mask(), "task.name: sft trains on the response tokens only, but the token store ",
              config.data.train, " has no loss mask — prepare it from prompt/response JSONL (`anvil data prepare "
              "--format jsonl` on lines {\"prompt\": ..., \"response\": ...}), or use task.name: lm to train on every token");
}

std::vector<std::pair<std::string, double>> SFTTask::step_metrics() {
  return {{"response_tokens", static_cast<double>(step_loss_tokens_)}};
}

}  // namespace anvil
