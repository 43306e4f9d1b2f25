// The shared start of every router task (task.name: router; MindSkip in trainer/router_task.h,
// Dr.LLM in trainer/drllm_task.h): the run config's router section as the model's RouterSpec,
// and model.init_from's backbone built frozen with the routers attached.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/layer_router.h"
#include "models/transformer.h"
#include "trainer/config.h"
#include "trainer/load_model.h"
#include "trainer/task.h"

namespace anvil {

// config.router as a RouterSpec for a backbone of num_layers layers (router.layers: [] = the last
// router.n but the final one); checked (check_router_spec).
RouterSpec router_spec(const RunConfig& config, int64_t num_layers);

// model.init_from's backbone for env.layout, built frozen (FrozenParamScope: its weights only) with
// the routers of router_spec attached; the routers' params are initialised (MindSkip: exactly 0,
// so the start equals the backbone bit for bit) and trainable, and returned in router_params.
// The routers are not read from model.init_from; a resume restores them (Task::checkpoint_params).
std::unique_ptr<TransformerLM> build_routed_backbone(const TaskEnv& env, std::vector<Param*>& router_params);

// A backbone's weights from `from` (an anvil checkpoint directory or a Hugging Face directory) into
// `model`, every param but `skip` (the routers, which the backbone's source does not hold).
void load_backbone_weights(TransformerLM& model, const std::string& from, const std::vector<Param*>& skip);

// A backbone of architecture `backbone` with the routers of the router run `routers` (its router
// section), everything frozen and uninitialised: for loading (load_model, load_routed_model).
std::unique_ptr<TransformerLM> build_frozen_routed(const RunConfig& routers, const ModelConfig& backbone,
                                                   const ModelLayout& layout);

// The router params of `model` (a routed model) read from the router checkpoint `checkpoint_dir`,
// returns its step. A checkpoint trained on another backbone (the architecture it records differs
// from the model's), or with other router layers, is one clear error naming the file and the fix.
int64_t load_router_checkpoint(TransformerLM& model, const std::string& checkpoint_dir);

// The router run out.config, checkpoint out.source, as a model (out.model, out.step): its routers
// on a backbone of architecture `backbone` whose weights are read from backbone_dir, everything
// frozen, on options' device and dtype or else the run's (run.device, run.precision).
void load_router_run(LoadedModel& out, const ModelConfig& backbone, const std::string& backbone_dir,
                     const LoadModelOptions& options);

// `anvil generate --routers` / `anvil eval --routers`: the router run or checkpoint `routers` on a
// backbone: `backbone` (a checkpoint, run or Hugging Face directory of the same architecture), or
// when empty the router run's model.init_from. The config is the router run's (tokenizer, data),
// its model.init_from pointed at the backbone used. Errors: `routers` is not a router run, or the
// backbone is another architecture than the routers were trained for.
LoadedModel load_routed_model(const std::string& routers, const std::string& backbone,
                              const LoadModelOptions& options);

// Whether two model configs describe the same backbone architecture (the keys a router's shape and
// meaning depend on); `why` names the first difference.
bool same_backbone(const ModelConfig& a, const ModelConfig& b, std::string* why = nullptr);

}  // namespace anvil
