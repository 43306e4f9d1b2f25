#include "trainer/router_backbone.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "models/hf_quant.h"
#include "trainer/checkpoint.h"

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

bool same_backbone(const ModelConfig& a, const ModelConfig& b, std::string* why) {
  const nlohmann::json ja = a.to_json(), jb = b.to_json();
  for (const char* key : {"model_type", "hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "intermediate_size"}) {
    if (!ja.contains(key) || !jb.contains(key) || ja[key] == jb[key]) continue;
    if (why) *why = std::string(key) + " = " + ja[key].dump() + " vs " + jb[key].dump();
    return false;
  }
  return true;
}

void load_router_checkpoint(TransformerLM& model, const std::string& checkpoint_dir, const RunConfig& trained_for) {
  std::string why;
  ANVIL_CHECK(same_backbone(trained_for.model, model.config(), &why), "the routers in ", checkpoint_dir,
              " were trained for another backbone (", why, ", the run's backbone first) — load them on the backbone "
              "they were trained on (its model.init_from: ", trained_for.model.init_from, ")");
  const RouterSpec* spec = model.routers();
  ANVIL_CHECK(spec != nullptr, "load_router_checkpoint: the model has no routers attached");
  CheckpointContents contents;
  contents.params = checkpoint_tensors(model.router_params());
  try {
    load_checkpoint(checkpoint_dir, contents);
  } catch (const Error& e) {
    ANVIL_FAIL("the routers in ", checkpoint_dir, " do not fit this backbone (trained for another backbone or other "
               "router layers?): ", e.what(), " — load them on the backbone they were trained on (",
               trained_for.model.init_from, ") with the run's router section");
  }
  refresh_values(model.router_params());
}

}  // namespace anvil
