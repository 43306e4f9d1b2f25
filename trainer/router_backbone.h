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

// The router params of `model` (a routed model) read from the router checkpoint `checkpoint_dir`,
// trained on `trained_for` (that run's model section). A checkpoint trained on another backbone, or
// with other router layers, is one clear error naming the file and the fix.
void load_router_checkpoint(TransformerLM& model, const std::string& checkpoint_dir, const RunConfig& trained_for);

// Whether two model configs describe the same backbone architecture (the keys a router's shape and
// meaning depend on); `why` names the first difference.
bool same_backbone(const ModelConfig& a, const ModelConfig& b, std::string* why = nullptr);

}  // namespace anvil
