#include "trainer/task.h"

#include "trainer/distill_task.h"
#include "trainer/lm_task.h"
#include "trainer/load_model.h"
#include "trainer/medusa_task.h"
#include "trainer/router_task.h"
#include "trainer/task_names.h"

namespace anvil {

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = {"lm", "sft", "distill", "medusa", "router"};
  return names;
}

std::unique_ptr<Task> make_task(const RunConfig& config) {
  const std::string& name = config.task.name;
  if (name == "router") {
    if (config.router.kind == "mindskip") return std::make_unique<MindSkipTask>();
    // TODO(lead, at merge): router.kind drllm -> std::make_unique<DrLLMTask>() from trainer/drllm_task.h.
    ANVIL_FAIL("router.kind: ", config.router.kind, " is not built into this anvil — use router.kind: mindskip");
  }
  if (name == "lm") return std::make_unique<LMTask>();
  if (name == "sft") return std::make_unique<SFTTask>();
  if (name == "distill") return std::make_unique<DistillTask>();
  if (name == "medusa") return std::make_unique<MedusaTask>();
  std::string choices;
  for (const std::string& n : task_names()) choices += (choices.empty() ? "" : ", ") + n;
  ANVIL_FAIL("task.name: '", name, "' is not a task — choose one of ", choices);
}

std::unique_ptr<Task> make_task(const std::string& name) {
  RunConfig config;
  config.task.name = name;
  return make_task(config);
}

std::unique_ptr<TransformerLM> build_trainable_lm(const TaskEnv& env) {
  const RunConfig& config = *env.config;
  auto model = std::make_unique<TransformerLM>(static_cast<const ModelConfig&>(config.model), env.layout);
  model->init_weights(static_cast<uint64_t>(config.run.seed));
  // model.init_from: its weights replace the fresh init (a checkpoint restored later still wins).
  if (!config.model.init_from.empty()) load_init_weights(*model, config.model.init_from);
  return model;
}

}  // namespace anvil
