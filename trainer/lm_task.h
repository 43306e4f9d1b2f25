// The language-modelling tasks: `lm` (next-token prediction over packed windows, today's
// pretraining; data.packing chooses whether documents in a window see each other) and `sft`
// (supervised fine-tuning on prompt/response pairs: the loss counts the response's tokens only,
// the prompt's are masked out by the store's loss mask, and documents are always packed with
// their boundaries).
#pragma once
#include <memory>

#include "models/lm_pipeline.h"
#include "trainer/task.h"

namespace anvil {

class LMTask : public Task {
 public:
  std::string name() const override { return "lm"; }
  void build(const TaskEnv& env) override;
  TransformerLM& model() override { return *model_; }
  PipelineStage& stage() override { return *stage_; }
  PipelineLoss& prepare(const std::vector<Batch>& batches, bool training) override;

 protected:
  TaskEnv env_;
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
