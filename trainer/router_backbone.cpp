#include "trainer/router_backbone.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "models/hf_convert.h"
#include "models/hf_quant.h"
#include "trainer/checkpoint.h"
#include "core/cuda_device.h"
#include "trainer/trainer.h"

namespace anvil {

namespace fs = std::filesystem;

RouterSpec router_spec(const RunConfig& config, int64_t num_layers) {
  const RouterSection& r = config.router;
  RouterSpec spec;
  spec.kind = r.kind == "drllm" ? RouterKind::DrLLM : RouterKind::MindSkip;
  spec.scope = r.scope == "mlp" ? SkipScope::FeedForward : r.scope == "block" ? SkipScope::Block : SkipScope::Attention;
  spec.unit = r.unit == "token" ? SkipUnit::Token : SkipUnit::Sequence;
  spec.layers = r.layers.empty() ? default_router_layers(num_layers, r.n) : r.layers;
  spec.tau = static_cast<float>(r.tau);
  spec.train_skipped = r.train_skipped;
  spec.hidden = r.hidden;
  spec.windows = r.windows;
  check_router_spec(spec, num_layers);
  return spec;
}

void load_backbone_weights(TransformerLM& model, const std::string& from, const std::vector<Param*>& skip) {
  std::error_code ec;
  if (fs::is_regular_file(fs::path(from) / kCheckpointFile, ec)) {
    const std::set<const Param*> skipped(skip.begin(), skip.end());
    std::vector<Param*> backbone;
    for (Param* p : model.params())
      if (!skipped.count(p)) backbone.push_back(p);
    CheckpointContents contents;  // the backbone's params only, each rank its shard
    contents.params = checkpoint_tensors(backbone);
    load_checkpoint(from, contents);
  } else {
    load_hf_dir(model, from);  // router params are not in a Hugging Face directory: hf_convert skips them
  }
}

std::unique_ptr<TransformerLM> build_routed_backbone(const TaskEnv& env, std::vector<Param*>& router_params) {
  const RunConfig& config = *env.config;
  ANVIL_CHECK(!config.model.init_from.empty(), config.source, ": task.name: router needs model.init_from (the "
              "frozen backbone the routers train on) — set model.init_from to an anvil run or checkpoint directory");
  const RouterSpec spec = router_spec(config, config.model.num_hidden_layers);
  std::unique_ptr<TransformerLM> model;
  {
    FrozenParamScope frozen;  // the backbone costs its weights only
    model = std::make_unique<TransformerLM>(static_cast<const ModelConfig&>(config.model), env.layout, &spec);
  }
  // The routers' init (MindSkip: exactly 0) comes from the model's rules; the backbone's values
  // are overwritten by model.init_from right after.
  model->init_weights(static_cast<uint64_t>(config.run.seed));
  router_params = model->router_params();
  load_backbone_weights(*model, config.model.init_from, router_params);
  for (Param* p : router_params) p->set_trainable(true);
  return model;
}

namespace {

// The first architecture field (the ones a router's shape and meaning depend on) where `a` and `b`
// differ, as "key = a vs b"; empty when none does.
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b) {
  for (const char* key : {"model_type", "hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "intermediate_size"}) {
    if (!a.contains(key) || !b.contains(key) || a[key] == b[key]) continue;
    return std::string(key) + " = " + a[key].dump() + " vs " + b[key].dump();
  }
  return "";
}

// The model.init_from a router checkpoint's run recorded (for messages).
std::string recorded_backbone(const CheckpointMeta& meta) {
  try {
    const YAML::Node run = YAML::Load(meta.run_config_yaml);
    if (run["model"] && run["model"]["init_from"]) return run["model"]["init_from"].as<std::string>();
  } catch (const YAML::Exception&) {
  }
  return "(unknown)";
}

}  // namespace

bool same_backbone(const ModelConfig& a, const ModelConfig& b, std::string* why) {
  const std::string d = first_difference(a.to_json(), b.to_json());
  if (why) *why = d;
  return d.empty();
}

std::unique_ptr<TransformerLM> build_frozen_routed(const RunConfig& routers, const ModelConfig& backbone,
                                                   const ModelLayout& layout) {
  const RouterSpec spec = router_spec(routers, backbone.num_hidden_layers);
  FrozenParamScope frozen;
  return std::make_unique<TransformerLM>(backbone, layout, &spec);
}

int64_t load_router_checkpoint(TransformerLM& model, const std::string& checkpoint_dir) {
  const CheckpointMeta meta = read_checkpoint_meta(checkpoint_dir);
  const std::string file = (fs::path(checkpoint_dir) / kCheckpointFile).string();
  const std::string why = first_difference(nlohmann::json::parse(meta.model_config_json), model.config().to_json());
  ANVIL_CHECK(why.empty(), "the routers in ", file, " were trained for another backbone (", why, ", theirs first) — "
              "load them on the backbone they were trained on (their run's model.init_from: ", recorded_backbone(meta),
              ")");
  ANVIL_CHECK(model.routers() != nullptr, "load_router_checkpoint: the model has no routers attached");
  CheckpointContents contents;
  contents.params = checkpoint_tensors(model.router_params());
  int64_t step = 0;
  try {
    step = load_checkpoint(checkpoint_dir, contents).step;
  } catch (const Error& e) {
    ANVIL_FAIL("the routers in ", file, " do not fit this backbone's routers (trained for another backbone, or other "
               "router layers or kind?): ", e.what(), " — load them with their own run's router section, on the "
               "backbone they were trained on (", recorded_backbone(meta), ")");
  }
  refresh_values(model.router_params());
  return step;
}

LoadedModel load_routed_model(const std::string& routers, const std::string& backbone,
                              const LoadModelOptions& options) {
  if (backbone.empty()) {
    LoadedModel out = load_model(routers, options);
    ANVIL_CHECK(out.config.task.name == "router", "--routers ", routers, " is not a router run (its task.name is ",
                out.config.task.name, ") — pass a run trained with task.name: router, or decode it with --checkpoint");
    return out;
  }
  LoadedModel out;
  out.source = find_checkpoint_dir(routers);
  const CheckpointMeta meta = read_checkpoint_meta(out.source);
  // The backbone's architecture (its config.json's, or its run config's) before any weight is read.
  std::error_code ec;
  const bool hf = fs::is_regular_file(fs::path(backbone) / "config.json", ec) &&
                  !fs::is_regular_file(fs::path(backbone) / kCheckpointFile, ec);
  const std::string backbone_dir = hf ? backbone : find_checkpoint_dir(backbone);
  const ModelConfig architecture = hf ? read_hf_config(backbone) : config_from_checkpoint(backbone_dir).model;
  const std::string why = first_difference(nlohmann::json::parse(meta.model_config_json), architecture.to_json());
  ANVIL_CHECK(why.empty(), "the routers in ", out.source, " were trained for another backbone than ", backbone, " (",
              why, ", theirs first) — pass the backbone they were trained on (", recorded_backbone(meta),
              ") with --checkpoint, or leave --checkpoint out to use it");
  std::vector<std::string> overrides = options.overrides;
  // The routers' recorded backbone need not exist here: the one given replaces it.
  overrides.push_back("model.init_from=" + fs::absolute(backbone_dir).lexically_normal().string());
  out.config = config_from_checkpoint(out.source, overrides);
  ANVIL_CHECK(out.config.task.name == "router", "--routers ", routers, " is not a router run (its task.name is ",
              out.config.task.name, ") — pass a run trained with task.name: router");
  load_router_run(out, architecture, backbone_dir, options);
  return out;
}

void load_router_run(LoadedModel& out, const ModelConfig& backbone, const std::string& backbone_dir,
                     const LoadModelOptions& options) {
  out.model = build_frozen_routed(out.config, backbone, options.layout);
  load_backbone_weights(*out.model, backbone_dir, out.model->router_params());
  out.step = load_router_checkpoint(*out.model, out.source);
  const Device device = options.device ? *options.device : training_device(out.config.run);
  const DType compute = options.compute ? *options.compute : compute_dtype(out.config.run);
  if (device.is_cuda()) cuda_set_device(device.index);
  out.model->to(device, compute);
}

}  // namespace anvil
