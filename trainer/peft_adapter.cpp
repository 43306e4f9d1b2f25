#include "trainer/peft_adapter.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "data/safetensors.h"
#include "models/linear_weight.h"

namespace anvil {

namespace fs = std::filesystem;

namespace {
constexpr const char* kPrefix = "base_model.model.";
constexpr const char* kWeights = "adapter_model.safetensors";
constexpr const char* kConfig = "adapter_config.json";

std::string leaf(const std::string& module) {
  const size_t dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

// PEFT's target_modules for exactly the adapted modules (see the header).
std::vector<std::string> target_modules(const std::vector<LinearWeight*>& linears) {
  std::map<std::string, bool> whole;  // leaf name -> every Linear with it is adapted
  for (const LinearWeight* lw : linears) {
    const std::string name = leaf(lw->module_name());
    if (lw->lora()) whole.emplace(name, true);
  }
  for (const LinearWeight* lw : linears)
    if (!lw->lora() && whole.count(leaf(lw->module_name()))) whole[leaf(lw->module_name())] = false;
  std::vector<std::string> out;
  for (const auto& [name, all] : whole)
    if (all) out.push_back(name);
  for (const LinearWeight* lw : linears)
    if (lw->lora() && !whole.at(leaf(lw->module_name()))) out.push_back(lw->module_name());
  return out;
}
}  // namespace

void save_peft_adapter(TransformerLM& model, const RunConfig& config, const std::string& dir) {
  const LoraSection& lora = config.lora;
  ANVIL_CHECK(lora.enabled(), "convert --to peft: the run has no LoRA adapters (lora.modules is empty) — export the "
              "model with --to hf");
  ANVIL_CHECK(lora.qa_group == 0, "convert --to peft: QA-LoRA adapters (lora.qa_group = ", lora.qa_group,
              ") read the group-pooled input, which PEFT's LoRA has no form for — export the merged model instead "
              "(--to hf DIR --merge)");
  std::error_code ec;
  ANVIL_CHECK(!fs::exists(fs::path(dir) / kWeights, ec) && !fs::exists(fs::path(dir) / kConfig, ec), "convert --to peft: ",
              dir, " holds an adapter already — choose a new directory");
  std::vector<LinearWeight*> linears;
  model.collect_linears(linears);
  TensorMap tensors;
  for (LinearWeight* lw : linears) {
    if (!lw->lora()) continue;
    ANVIL_CHECK(!lw->lora()->A.shard.sharded() && !lw->lora()->B.shard.sharded(), lw->module_name(),
                ": the adapter is split over tensor parallelism — export from one process (anvil convert)");
    tensors.emplace(kPrefix + lw->module_name() + ".lora_A.weight", host_f32(master_weight(lw->lora()->A)).contiguous());
    tensors.emplace(kPrefix + lw->module_name() + ".lora_B.weight", host_f32(master_weight(lw->lora()->B)).contiguous());
  }
  ANVIL_CHECK(!tensors.empty(), "convert --to peft: the model has no adapters attached");
  // peft 0.10's LoraConfig fields (from_pretrained passes every key to its constructor: no others).
  const nlohmann::json cfg = {
      {"alpha_pattern", nlohmann::json::object()},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", config.model.init_from},
      {"bias", "none"},
      // GPT-2's Conv1D stores its weight [in, out]; PEFT sets this for it (A and B keep their shapes).
      {"fan_in_fan_out", config.model.model_type == "gpt2"},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"layer_replication", nullptr},
      {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},
      {"loftq_config", nlohmann::json::object()},
      {"lora_alpha", lora.alpha},
      {"lora_dropout", lora.dropout},
      {"megatron_config", nullptr},
      {"megatron_core", "megatron.core"},
      {"modules_to_save", nullptr},
      {"peft_type", "LORA"},
      {"r", lora.r},
      {"rank_pattern", nlohmann::json::object()},
      {"revision", nullptr},
      {"target_modules", target_modules(linears)},
      {"task_type", "CAUSAL_LM"},
      {"use_dora", false},
      {"use_rslora", lora.rslora},
  };
  fs::create_directories(dir, ec);
  ANVIL_CHECK(!ec, "cannot create ", dir, ": ", ec.message());
  write_safetensors((fs::path(dir) / kWeights).string(), tensors, {{"format", "pt"}});
  const std::string path = (fs::path(dir) / kConfig).string();
  std::ofstream out(path);
  out << cfg.dump(2) << "\n";
  ANVIL_CHECK(out.good(), "cannot write ", path);
}

void load_peft_adapter(const std::vector<Param*>& adapters, const RunConfig& config, const std::string& dir) {
  const LoraSection& lora = config.lora;
  const std::string cfg_path = (fs::path(dir) / kConfig).string();
  const std::string weights_path = (fs::path(dir) / kWeights).string();
  std::error_code ec;
  ANVIL_CHECK(fs::is_regular_file(cfg_path, ec), "lora.init_from: ", dir, " has no ", kConfig,
              " — point lora.init_from at a PEFT adapter directory (save_pretrained's output)");
  ANVIL_CHECK(fs::is_regular_file(weights_path, ec), "lora.init_from: ", dir, " has no ", kWeights,
              fs::is_regular_file(fs::path(dir) / "adapter_model.bin", ec)
                  ? " (only adapter_model.bin) — save it with save_pretrained(..., safe_serialization=True)"
                  : " — point lora.init_from at a PEFT adapter directory (save_pretrained's output)");
  nlohmann::json cfg;
  try {
    std::ifstream in(cfg_path);
    cfg = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    ANVIL_FAIL("lora.init_from: ", cfg_path, " is not valid JSON: ", e.what());
  }
  auto field = [&](const char* key) -> const nlohmann::json& {
    ANVIL_CHECK(cfg.contains(key), "lora.init_from: ", cfg_path, " has no ", key, " — it is not a PEFT LoRA config");
    return cfg[key];
  };
  ANVIL_CHECK(field("peft_type") == "LORA", "lora.init_from: ", cfg_path, " has peft_type ", cfg["peft_type"].dump(),
              "; only LoRA adapters (\"LORA\") load");
  ANVIL_CHECK(field("r").is_number_integer() && field("r").get<int64_t>() == lora.r, "lora.init_from: ", cfg_path,
              " has r = ", cfg["r"].dump(), " but lora.r = ", lora.r, " — set lora.r to the adapter's rank");
  ANVIL_CHECK(field("lora_alpha").is_number() && field("lora_alpha").get<double>() == lora.alpha, "lora.init_from: ",
              cfg_path, " has lora_alpha = ", cfg["lora_alpha"].dump(), " but lora.alpha = ", lora.alpha,
              " — set lora.alpha to the adapter's");
  const bool rslora = cfg.contains("use_rslora") && cfg["use_rslora"].is_boolean() && cfg["use_rslora"].get<bool>();
  ANVIL_CHECK(rslora == lora.rslora, "lora.init_from: ", cfg_path, " has use_rslora = ", rslora ? "true" : "false",
              " but lora.rslora = ", lora.rslora ? "true" : "false", " — set lora.rslora to the adapter's");
  ANVIL_CHECK(!cfg.contains("use_dora") || !cfg["use_dora"].is_boolean() || !cfg["use_dora"].get<bool>(),
              "lora.init_from: ", cfg_path, " is a DoRA adapter (use_dora: true), which anvil does not train");
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    ANVIL_CHECK(!cfg.contains(key) || cfg[key].is_null() || cfg[key].empty(), "lora.init_from: ", cfg_path, " sets ",
                key, " (per-module ranks or alphas) — anvil's adapters share lora.r and lora.alpha");
  ANVIL_CHECK(lora.qa_group == 0, "lora.init_from: a PEFT adapter cannot start QA-LoRA adapters (lora.qa_group = ",
              lora.qa_group, "): their A reads the group-pooled input — set lora.qa_group: 0");

  std::map<std::string, Param*> by_name;
  for (Param* p : adapters) by_name.emplace(p->name, p);
  const SafetensorsFile file = SafetensorsFile::open(weights_path);
  // Every check before any copy: a bad file leaves the adapters as they were.
  std::set<std::string> found;
  for (const std::string& name : file.names()) {
    const std::string prefix = kPrefix;
    ANVIL_CHECK(name.rfind(prefix, 0) == 0, "lora.init_from: ", weights_path, " holds ", name, ", not a ", prefix,
                "<module>.lora_A/B.weight adapter tensor — it is not a PEFT LoRA adapter of a causal LM");
    const std::string ours = name.substr(prefix.size());
    const auto it = by_name.find(ours);
    ANVIL_CHECK(it != by_name.end(), "lora.init_from: ", weights_path, " holds ", name, ", which is no adapter of this "
                "run (lora.modules adapts ", adapters.size() / 2, " Linear layers) — an adapter for another base, or "
                "other target modules: set lora.modules to the adapter's target_modules");
    const Shape want = logical_shape(*it->second);
    ANVIL_CHECK(file.info(name).shape == want, "lora.init_from: ", weights_path, ": ", name, " has shape ",
                shape_str(file.info(name).shape), " but the model's ", ours, " is ", shape_str(want),
                " — an adapter for another base (or another rank)");
    found.insert(ours);
  }
  for (const Param* p : adapters)
    ANVIL_CHECK(found.count(p->name), "lora.init_from: ", weights_path, " has no ", kPrefix, p->name,
                " — the adapter does not cover lora.modules: set lora.modules to its target_modules");
  for (Param* p : adapters) {
    const Tensor full = file.get_f32(kPrefix + p->name);
    master_weight(*p).copy_(p->shard.sharded() ? take_shard(*p, full) : full);
    refresh_value(*p);
  }
}

}  // namespace anvil
