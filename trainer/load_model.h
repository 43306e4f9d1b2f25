// Loading a model to use rather than train: `anvil eval`, `anvil generate`, and a task's
// frozen models (a distillation target, a quantized base, the original model for
// self-distillation). One function reads either source:
//   - an anvil checkpoint: a checkpoint directory (…/checkpoints/step_N), or a run directory
//     or checkpoint root, whose newest complete checkpoint is taken;
//   - a Hugging Face directory (config.json + model.safetensors or a sharded index).
// The model is built frozen (FrozenParamScope): no gradient buffer, no f32 master and no
// optimizer state ever exist, so it costs its weights (and RoPE tables) only, at every moment.
// Its weights are read straight into the model, never initialised first, and the model is moved
// to its device once.
//
// A medusa run (task.name: medusa) loads as its base with the Medusa heads attached
// (LoadedModel::medusa, built frozen from config.medusa): a stage-1 checkpoint holds the heads
// only, so the base's weights come from the run's model.init_from (an anvil checkpoint or a
// Hugging Face directory) and the heads from the checkpoint; a stage-2 checkpoint holds both.
// Whoever ignores the heads (plain `anvil generate`) decodes the base alone.
//
// A LoRA run (lora.modules) loads as it trained: the base from model.init_from, quantized by the
// quant section and adapted (trainer/lora.h adapt_base, everything frozen), then the checkpoint's
// adapters and packed codes (lora_checkpoint_params). Quantized Linears compute through the
// quantized kernels, the adapters beside them, in generate, eval and KV-cache decoding alike.
//
// A router run (task.name: router) loads as its backbone (model.init_from) with the routers
// attached (trainer/router_backbone.h), their weights from the checkpoint, which holds nothing else.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/medusa_heads.h"
#include "models/transformer.h"
#include "trainer/config.h"

namespace anvil {

struct LoadModelOptions {
  // Where the model runs and in which dtype; unset: a checkpoint's run.device and run.precision
  // (after the overrides), the CPU in f32 for a Hugging Face directory.
  std::optional<Device> device;
  std::optional<DType> compute;
  ModelLayout layout;          // a split model (each rank reads its shard); default: the whole model
  // `--set key=value` overrides of the stored run config (a checkpoint; e.g. run.device=cpu).
  std::vector<std::string> overrides;
};

struct LoadedModel {
  std::unique_ptr<TransformerLM> model;
  // A checkpoint's run config, pointed back at that checkpoint (checkpoint.resume); for a
  // Hugging Face directory a config whose model section is its config.json and whose data.train
  // is none (its tokenizer.json, when present, is tokenizer.path).
  RunConfig config;
  int64_t step = 0;    // the checkpoint's optimizer step (0 for a Hugging Face directory)
  std::string source;  // the checkpoint directory or Hugging Face directory read
  // A medusa run's heads (attached to `model`, on its device and in its dtype); null otherwise.
  std::unique_ptr<MedusaHeads> medusa;
};

LoadedModel load_model(const std::string& path, const LoadModelOptions& options = {});

// A checkpoint directory (holding checkpoint.h5), or the newest complete one under a run
// directory (its checkpoints/) or a checkpoint root. Throws naming the path otherwise.
std::string find_checkpoint_dir(const std::string& path);
// model.init_from's weights into `model` (built for that architecture): an anvil checkpoint
// directory (its params only, each rank its shard) or a Hugging Face directory.
void load_init_weights(TransformerLM& model, const std::string& from);
// The run config stored in a checkpoint, with checkpoint.resume pointing at it, then `overrides`.
RunConfig config_from_checkpoint(const std::string& path, const std::vector<std::string>& overrides = {});

}  // namespace anvil
