#include "trainer/load_model.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/hf_convert.h"
#include "models/hf_quant.h"
#include "core/cuda_device.h"
#include "trainer/checkpoint.h"
#include "trainer/lora.h"
#include "trainer/parallel_spec_rows.h"
#include "trainer/router_backbone.h"
#include "trainer/trainer.h"

namespace anvil {

namespace fs = std::filesystem;

std::string find_checkpoint_dir(const std::string& path) {
  std::error_code ec;
  ANVIL_CHECK(fs::exists(path, ec), "no such checkpoint or model directory: ", path, " — check the path");
  if (fs::is_regular_file(fs::path(path) / kCheckpointFile, ec)) return path;
  // A run directory or a checkpoint root: take the newest checkpoint under it.
  std::string found = latest_checkpoint((fs::path(path) / "checkpoints").string());
  if (found.empty()) found = latest_checkpoint(path);
  ANVIL_CHECK(!found.empty(), "no complete checkpoint in ", path,
              " — pass a checkpoint directory (…/checkpoints/step_N), a run directory, or a Hugging Face directory "
              "(config.json + model.safetensors)");
  return found;
}

RunConfig config_from_checkpoint(const std::string& path, const std::vector<std::string>& overrides) {
  const std::string dir = find_checkpoint_dir(path);
  const CheckpointMeta meta = read_checkpoint_meta(dir);
  std::vector<std::string> all = overrides;
  all.push_back("checkpoint.resume=" + dir);
  return parse_run_config(meta.run_config_yaml, dir + "/" + kCheckpointFile, dir, all);
}

namespace {
bool is_hf_dir(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(path) / "config.json", ec) &&
         !fs::is_regular_file(fs::path(path) / kCheckpointFile, ec);
}

// Built frozen: no gradient buffer is ever allocated, and no f32 master once moved to bf16.
std::unique_ptr<TransformerLM> build_frozen(const ModelConfig& config, const ModelLayout& layout) {
  FrozenParamScope frozen;
  return std::make_unique<TransformerLM>(config, layout);
}

// A medusa or LoRA checkpoint whose base (model.init_from) has gone: parse_run_config would stop
// at the missing path with a training-time message; say what the path is needed for and the fix.
void check_base_present(const std::string& dir, const CheckpointMeta& meta, const std::vector<std::string>& overrides) {
  for (const std::string& o : overrides)
    if (o.rfind("model.init_from=", 0) == 0) return;  // the user points at the base elsewhere
  YAML::Node run;
  try {
    run = YAML::Load(meta.run_config_yaml);
  } catch (const YAML::Exception&) {
    return;  // parse_run_config reports it
  }
  const bool medusa = run["task"] && run["task"]["name"] && run["task"]["name"].as<std::string>() == "medusa";
  const bool router = run["task"] && run["task"]["name"] && run["task"]["name"].as<std::string>() == "router";
  const bool lora = run["lora"] && run["lora"]["modules"] && run["lora"]["modules"].IsSequence() &&
                    run["lora"]["modules"].size() > 0;
  if (!medusa && !lora && !router) return;
  if (!run["model"] || !run["model"]["init_from"]) return;
  const std::string base = run["model"]["init_from"].as<std::string>();
  std::error_code ec;
  if (base.empty() || fs::exists(base, ec)) return;
  std::string why;
  if (router) {
    ANVIL_FAIL("the router run ", dir, " was trained on the backbone ", base, " (its model.init_from), which no longer "
               "exists — a router checkpoint holds the routers only, so the backbone's weights must be read from there: "
               "restore it, or point at a copy of the same backbone with --set model.init_from=PATH");
  }
  if (lora) {
    why = "a LoRA checkpoint holds the adapters (and a quantized base's packed codes) only, so the base's weights "
          "must be read from there";
  } else {
    const bool heads_only = !run["medusa"] || !run["medusa"]["stage"] || run["medusa"]["stage"].as<int>() == 1;
    why = heads_only ? "a stage-1 checkpoint holds the heads only, so the base's weights must be read from there"
                     : "the run's architecture is read from there";
  }
  ANVIL_FAIL("the ", lora ? "LoRA" : "Medusa", " run ", dir, " was trained on the base model ", base,
             " (its model.init_from), which no longer exists — ", why,
             ": restore it, or point at a copy of the same base with --set model.init_from=PATH");
}

// A stage-1 checkpoint's heads were trained on the architecture its run config records; the
// base model.init_from names now must have it, or a clear error rather than a shape mismatch
// deep in the loader.
void check_same_base(const std::string& dir, const RunConfig& config) {
  const std::string& base = config.model.init_from;
  std::error_code ec;
  const nlohmann::json now = fs::is_regular_file(fs::path(base) / kCheckpointFile, ec)
                                 ? nlohmann::json::parse(read_checkpoint_meta(base).model_config_json)
                                 : read_hf_config(base).to_json();
  const nlohmann::json then = config.model.to_json();
  for (const char* key : {"model_type", "hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "intermediate_size"}) {
    if (!then.contains(key) || !now.contains(key) || then[key] == now[key]) continue;
    ANVIL_FAIL("the Medusa heads in ", dir, " were trained on a base with ", key, " = ", then[key].dump(),
               ", but model.init_from ", base, " has ", key, " = ", now[key].dump(), " — another model: point "
               "model.init_from (--set model.init_from=PATH) at the base the heads were trained on");
  }
}
}  // namespace

void load_init_weights(TransformerLM& model, const std::string& from) {
  std::error_code ec;
  if (fs::is_regular_file(fs::path(from) / kCheckpointFile, ec)) {
    CheckpointContents contents;  // an anvil checkpoint: its params only, each rank its shard
    contents.params = checkpoint_tensors(model.params());
    load_checkpoint(from, contents);
  } else {
    load_hf_dir(model, from);  // pre-quantized Linears (GPTQ, bitsandbytes nf4) stay quantized
  }
}

LoadedModel load_model(const std::string& path, const LoadModelOptions& options) {
  LoadedModel out;
  const bool from_hf = is_hf_dir(path);
  if (from_hf) {
    ANVIL_CHECK(options.overrides.empty(), path, " is a Hugging Face directory: it has no run config for --set to "
                "override — convert it first (`anvil convert --from-hf ", path, " --to DIR`) or drop --set");
    const ModelConfig mc = read_hf_config(path);
    out.model = build_frozen(mc, options.layout);
    load_hf_dir(*out.model, path);
    static_cast<ModelConfig&>(out.config.model) = mc;
    out.config.model.init_from = fs::absolute(path).lexically_normal().string();
    out.config.data.train = "none";
    const fs::path tokenizer = fs::path(path) / "tokenizer.json";
    std::error_code ec;
    if (fs::is_regular_file(tokenizer, ec)) out.config.tokenizer.path = fs::absolute(tokenizer).string();
    out.source = path;
  } else {
    out.source = find_checkpoint_dir(path);
    const CheckpointMeta meta = read_checkpoint_meta(out.source);
    check_base_present(out.source, meta, options.overrides);
    out.config = config_from_checkpoint(out.source, options.overrides);
    if (out.config.task.name == "router") {  // the backbone from model.init_from, the routers from the checkpoint
      load_router_run(out, out.config.model, out.config.model.init_from, options);
      return out;
    }
    out.model = build_frozen(out.config.model, options.layout);
    if (const int64_t masks = parallel_spec_masks(out.config)) {  // a ParallelSpec drafter's mask tokens
      FrozenParamScope frozen;
      out.model->add_mask_embeddings(masks, 0);
    }
    const bool medusa = out.config.task.name == "medusa";
    const bool heads_only = medusa && out.config.medusa.stage == 1;
    std::vector<Param*> adapters;
    if (out.config.lora.enabled()) {  // the base from model.init_from, quantized and adapted as in training
      load_init_weights(*out.model, out.config.model.init_from);
      FrozenParamScope frozen;  // the adapters too: nothing trains here
      adapters = adapt_base(*out.model, out.config, options.layout.tp, nullptr);
    }
    if (heads_only) {  // Medusa-1: the base from model.init_from, before the heads join its params
      check_same_base(out.source, out.config);
      load_init_weights(*out.model, out.config.model.init_from);
    }
    if (medusa && out.model->is_last_stage()) {  // the heads live where the LM head does
      const MedusaSection& spec = out.config.medusa;
      const ModelConfig& mc = out.config.model;
      FrozenParamScope frozen;
      out.medusa = std::make_unique<MedusaHeads>(spec.num_heads, spec.num_layers, mc.hidden_size, mc.vocab_size,
                                                 options.layout.tp);
      out.model->attach(*out.medusa);  // moved with the model; listed in its params
    }
    CheckpointContents contents;  // each param's shard under a split layout
    if (heads_only)
      contents.params = out.medusa ? checkpoint_tensors(out.medusa->params()) : std::vector<CheckpointTensor>{};
    else if (out.config.lora.enabled())
      contents.params = checkpoint_tensors(lora_checkpoint_params(*out.model, adapters));
    else
      contents.params = checkpoint_tensors(out.model->params());
    out.step = load_checkpoint(out.source, contents).step;
  }
  const Device device = options.device ? *options.device : from_hf ? Device::cpu() : training_device(out.config.run);
  const DType compute = options.compute ? *options.compute : from_hf ? DType::F32 : compute_dtype(out.config.run);
  if (device.is_cuda()) cuda_set_device(device.index);
  out.model->to(device, compute);
  return out;
}

}  // namespace anvil
