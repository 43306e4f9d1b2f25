#include "trainer/lm_task.h"

#include "parallel/data_parallel.h"
#include "trainer/batch_context.h"

namespace anvil {

void LMTask::build(const TaskEnv& env) {
  env_ = env;
  model_ = build_trainable_lm(env);
  stage_ = std::make_unique<TransformerStage>(*model_);
  loss_ = std::make_unique<CausalLMLoss>(*stage_, static_cast<int>(env.config->training.ignore_index));
}

PipelineLoss& LMTask::prepare(const std::vector<Batch>& batches, bool training) {
  const int ignore = static_cast<int>(env_.config->training.ignore_index);
  const int64_t M = static_cast<int64_t>(batches.size());
  std::vector<LMMicroBatch> micro(M);
  std::vector<Tensor> ids(M);
  std::vector<std::shared_ptr<StepContext>> contexts(M);
  std::vector<int64_t> tokens(M);  // each micro-batch's non-ignored targets on this rank
  step_loss_tokens_ = 0;
  for (int64_t m = 0; m < M; ++m) {
    const Batch& batch = batches[m];
    // Training: each micro-batch's loss is scaled by 1/M and normalised by the global micro-batch's
    // token count (trainer.h); evaluation: the mean over its own tokens.
    micro[m] = {batch.ids.to(env_.device), batch.targets.to(env_.device), training ? 1.0f / static_cast<float>(M) : 1.0f,
                -1};
    tokens[m] = count_loss_tokens(batch.targets, ignore);  // on the host copy
    if (training) {
      const int64_t global = env_.data_group ? all_reduce_sum(*env_.data_group, tokens[m]) : tokens[m];
      if (env_.data_group) micro[m].loss_tokens = global;
      step_loss_tokens_ += global;
    }
    ids[m] = micro[m].ids;
    // Packed documents: their boundaries and restarted positions (null for plain windows).
    contexts[m] = make_step_context(batch, model_->config().max_position_embeddings, env_.device);
  }
  stage_->set_inputs(std::move(ids), std::move(contexts));
  loss_->set_micro_batches(micro, std::move(tokens));
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
