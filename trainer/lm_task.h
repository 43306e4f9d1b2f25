// The language-modelling tasks: `lm` (next-token prediction over packed windows, today's
// pretraining; data.packing chooses whether documents in a window see each other) and `sft`
// (supervised fine-tuning on prompt/response pairs: the loss counts the response's tokens only,
// the prompt's are masked out by the store's loss mask, and documents are always packed with
// their boundaries). Either can train LoRA adapters on a frozen base instead of the whole model
// (the lora section; trainer/lora.h).
#pragma once
#include <memory>

#include "models/lm_pipeline.h"
#include "trainer/task.h"

namespace anvil {

// A step's batches as causal-LM micro-batches on env.device (LMTask and DistillTask).
struct LMStepInputs {
  std::vector<LMMicroBatch> micro;
  std::vector<Tensor> ids;                               // each micro-batch's ids (micro[m].ids)
  std::vector<std::shared_ptr<StepContext>> contexts;    // packed documents' boundaries (null: plain windows)
  std::vector<int64_t> tokens;                           // each micro-batch's non-ignored targets on this rank
  int64_t global_tokens = 0;  // training: the step's non-ignored targets over env.data_group (else 0)
};
// Training: each micro-batch's loss is scaled by 1/M and normalised by the global micro-batch's
// token count (a collective over env.data_group; trainer.h); evaluation: the mean over its own
// tokens. max_positions: the model's, which the step contexts are checked against.
LMStepInputs make_lm_step(const TaskEnv& env, const std::vector<Batch>& batches, bool training,
                          int64_t max_positions);

// A task's trainable LM (LMTask, and DistillTask's standalone drafter): with the lora section on,
// model.init_from's base built frozen (its weights only), quantized and adapted by adapt_base
// (trainer/lora.h), the adapter params into `adapters` (started from lora.init_from's PEFT adapter
// unless a resume replaces them); else build_trainable_lm (adapters empty).
std::unique_ptr<TransformerLM> build_adaptable_lm(const TaskEnv& env, std::vector<Param*>& adapters);
// Training with lora.dropout > 0: each micro-batch's adapter dropout key (lora_dropout_key) into its
// step context; `step` is the training steps done. Evaluation drops nothing: not called.
void set_lora_dropout(const TaskEnv& env, int64_t step, LMStepInputs& in);

class LMTask : public Task {
 public:
  std::string name() const override { return "lm"; }
  void build(const TaskEnv& env) override;
  TransformerLM& model() override { return *model_; }
  PipelineStage& stage() override { return *stage_; }
  PipelineLoss& prepare(const std::vector<Batch>& batches, bool training) override;
  void begin_step(int64_t step) override { step_ = step; }
  // With LoRA: the adapters (the base is model.init_from's, frozen); else the whole model.
  std::vector<Param*> checkpoint_params() override;
  std::vector<Param*> tunable_params() override;

 protected:
  TaskEnv env_;
  std::vector<Param*> adapters_;  // LoRA's params (empty without LoRA)
  int64_t step_ = 0;              // training steps done (begin_step): the dropout draws' key
  std::unique_ptr<TransformerLM> model_;
  std::unique_ptr<TransformerStage> stage_;
  std::unique_ptr<CausalLMLoss> loss_;
  int64_t step_loss_tokens_ = 0;  // non-ignored targets in the last training step, over data_group
};

class SFTTask : public LMTask {
 public:
  std::string name() const override { return "sft"; }
  // The store must carry loss masks (`anvil data prepare` writes them for prompt/response JSONL).
  void check_data(const RunConfig& config, const TokenStore& store) const override;
  // Documents packed with their boundaries: a pair never attends to the one before it.
  void configure_loader(LoaderConfig& loader) const override;
  // The response tokens the step's loss was over, summed over every data-parallel rank.
  std::vector<std::pair<std::string, double>> step_metrics() override;
};

}  // namespace anvil
