#include "models/hf_convert.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "data/tokenizer.h"
#include "models/linear_weight.h"
#include "models/transformer.h"

namespace anvil {
namespace fs = std::filesystem;

namespace {

// Checks a field's value against what anvil implements; `ok` decides, the message names it.
void reject_if(bool bad, const std::string& source, const std::string& field, const nlohmann::json& value,
               const std::string& why) {
  ANVIL_CHECK(!bad, source, ": unsupported field value ", field, " = ", value.dump(), " — ", why);
}

}  // namespace

ModelConfig hf_config_from_json(const nlohmann::json& j, const std::string& source) {
  ANVIL_CHECK(j.is_object(), source, ": expected a JSON object");
  auto field = [&](const char* key) -> const nlohmann::json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  const nlohmann::json* type = field("model_type");
  ANVIL_CHECK(type != nullptr, source, ": missing 'model_type' — expected 'gpt2', 'llama', 'qwen2' or 'mistral'");
  const std::string t = type->is_string() ? type->get<std::string>() : type->dump();
  ANVIL_CHECK(t == "gpt2" || t == "llama" || t == "qwen2" || t == "mistral", source,
              ": unsupported field value model_type = ", type->dump(),
              " — anvil loads 'gpt2', 'llama', 'qwen2' and 'mistral' checkpoints");

  // rope_scaling, sliding_window and use_sliding_window are checked by ModelConfig::from_json.
  if (t != "gpt2") {
    if (const auto* v = field("pretraining_tp"))
      reject_if(!v->is_number_integer() || v->get<int64_t>() < 1, source, "pretraining_tp", *v,
                "expected a positive integer (it only changes how transformers slices the matmuls)");
    if (const auto* v = field("attention_dropout"))
      reject_if(!v->is_number() || v->get<double>() != 0.0, source, "attention_dropout", *v,
                "anvil has no dropout; set it to 0.0");
  } else {  // gpt2
    auto flag = [&](const char* key, bool wanted, const std::string& why) {
      if (const auto* v = field(key)) reject_if(!v->is_boolean() || v->get<bool>() != wanted, source, key, *v, why);
    };
    flag("scale_attn_weights", true, "anvil always scales attention scores by 1/sqrt(head_dim)");
    flag("scale_attn_by_inverse_layer_idx", false, "scaling attention by 1/(layer index + 1) is not implemented");
    flag("add_cross_attention", false, "anvil models are decoder-only; cross-attention is not implemented");
    if (const auto* v = field("n_inner"))
      reject_if(!v->is_number_integer() || v->get<int64_t>() <= 0, source, "n_inner", *v,
                "expected a positive integer or null (4 * n_embd)");
  }
  ModelConfig c = ModelConfig::from_json(j, source);  // field types, sizes and the activation
  return c;
}

ModelConfig read_hf_config(const std::string& dir_or_file) {
  std::error_code ec;
  const std::string path =
      fs::is_directory(dir_or_file, ec) ? (fs::path(dir_or_file) / "config.json").string() : dir_or_file;
  std::ifstream in(path);
  ANVIL_CHECK(in.good(), "cannot open ", path, " — a Hugging Face model directory holds config.json");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    ANVIL_FAIL(path, ": not valid JSON (", e.what(), ")");
  }
  return hf_config_from_json(j, path);
}

namespace {
const char* hf_architecture(const std::string& model_type) {
  if (model_type == "gpt2") return "GPT2LMHeadModel";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  if (model_type == "mistral") return "MistralForCausalLM";
  return "LlamaForCausalLM";
}
}  // namespace

nlohmann::json hf_config_json(const ModelConfig& config, std::optional<int32_t> eos_token_id) {
  nlohmann::json j = config.to_json();
  const bool gpt2 = config.family() == ModelFamily::GPT2;
  j["architectures"] = nlohmann::json::array({hf_architecture(config.model_type)});
  j["torch_dtype"] = "float32";
  // transformers' defaults (llama: bos 1, eos 2; gpt2: 50256) would stop generation at an arbitrary token.
  const nlohmann::json eos = eos_token_id ? nlohmann::json(*eos_token_id) : nlohmann::json(nullptr);
  j["bos_token_id"] = eos;
  j["eos_token_id"] = eos;
  if (gpt2) {
    // anvil has no dropout; transformers defaults these to 0.1 (inactive in eval mode anyway).
    for (const char* key : {"attn_pdrop", "embd_pdrop", "resid_pdrop"}) j[key] = 0.0;
    j["scale_attn_weights"] = true;
    j["scale_attn_by_inverse_layer_idx"] = false;
    j["reorder_and_upcast_attn"] = false;
  } else {
    j["attention_dropout"] = 0.0;
    if (config.model_type == "llama") j["pretraining_tp"] = 1;
  }
  return j;
}

namespace {

// GPT-2's Conv1D weights: stored [in, out] by Hugging Face (the family table lists them).
bool is_conv1d(const ModelConfig& config, const std::string& name) { return family_of(config).is_transposed(name); }

std::string shape_text(const Shape& s) { return shape_str(s); }

// Written under a temporary name and renamed, so a reader never sees half a file.
void write_json_file(const std::string& path, const nlohmann::json& j) {
  {
    std::ofstream out(path + ".tmp");
    out << j.dump(2) << "\n";
    ANVIL_CHECK(out.good(), "cannot write ", path, " — check the directory's permissions and free space");
  }
  fs::rename(path + ".tmp", path);
}

// tokenizer_config.json: the generic fast tokenizer over tokenizer.json, decoding the bytes as they
// are (no clean-up of spaces before punctuation, which anvil's decode does not do either).
nlohmann::json hf_tokenizer_config(const Tokenizer& tokenizer, int64_t max_length) {
  nlohmann::json j = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                      {"clean_up_tokenization_spaces", false},
                      {"model_max_length", max_length}};
  if (tokenizer.token_to_id(kHfEosToken)) j["bos_token"] = j["eos_token"] = kHfEosToken;
  return j;
}

}  // namespace

void load_hf_weights(TransformerLM& model, const SafetensorsIndex& index, const std::set<std::string>& quantized) {
  const ModelConfig& config = model.config();
  const std::string& src = index.path();
  const std::string prefix = family_of(config).model_prefix;
  const std::vector<Param*> all = model.params();

  // Base-model files (GPT2Model / LlamaModel) drop the prefix: decide by the embedding's name.
  const std::string embed = all.front()->name;  // wte / embed_tokens comes first
  const bool unprefixed = !index.contains(embed) && embed.rfind(prefix, 0) == 0 &&
                          index.contains(embed.substr(prefix.size()));
  auto file_name = [&](const std::string& param_name) {
    if (unprefixed && param_name.rfind(prefix, 0) == 0) return param_name.substr(prefix.size());
    return param_name;
  };

  // A quantized Linear's dense weight is read apart (its module's tensors are the packed form).
  auto skipped = [&](const Param& p) {
    const size_t dot = p.name.rfind(".weight");
    return dot != std::string::npos && dot + 7 == p.name.size() && quantized.count(p.name.substr(0, dot));
  };
  std::vector<std::string> quantized_prefixes;
  for (const std::string& m : quantized) quantized_prefixes.push_back(file_name(m) + ".");

  // Layer-skip routers (task router) train on a backbone whose files never hold them: they keep their init.
  const std::vector<Param*> routers = model.router_params();
  std::vector<Param*> params;
  for (Param* p : all)
    if (index.contains(file_name(p->name)) || std::find(routers.begin(), routers.end(), p) == routers.end())
      params.push_back(p);

  // Check everything first, so a bad file leaves the model untouched.
  std::set<std::string> used;
  std::vector<std::string> missing;
  for (Param* p : params) {
    if (skipped(*p)) continue;
    const std::string name = file_name(p->name);
    if (!index.contains(name)) {
      missing.push_back(name);
      continue;
    }
    used.insert(name);
    const SafetensorsInfo& info = index.info(name);
    const bool conv = is_conv1d(config, p->name);
    const Shape want = logical_shape(*p);  // a tensor-parallel shard loads its slice of the full tensor
    const Shape expected = conv ? Shape{want[1], want[0]} : want;
    ANVIL_CHECK(info.shape == expected, index.file_of(name).path(), ": tensor '", name, "' has shape ",
                shape_text(info.shape), " but the model expects ", shape_text(expected),
                conv ? " (GPT-2 Conv1D layout [in, out])" : "",
                " — config.json does not describe these weights (check hidden_size, intermediate_size, "
                "num_key_value_heads, vocab_size)");
    const bool float_type = info.supported && (info.dtype == DType::F32 || info.dtype == DType::BF16 ||
                                               info.dtype == DType::F16);
    ANVIL_CHECK(float_type, index.file_of(name).path(), ": tensor '", name, "' has dtype ", info.format_dtype,
                " — anvil loads weights stored as F32, BF16 or F16");
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", '" : "'") + missing[i] + "'";
    if (missing.size() > 5) list += ", ... (" + std::to_string(missing.size()) + " in all)";
    ANVIL_FAIL(src, ": missing tensor ", list, " — the checkpoint lacks weights the ", config.model_type,
               " model in config.json needs",
               config.tie_word_embeddings ? "" : " (a missing lm_head.weight means the head is tied: set "
                                                 "tie_word_embeddings true)");
  }

  // Tensors the model does not use. A pipeline stage holds only its own layers, so there it
  // checks only that its tensors are present and well-shaped (above), not what else the file holds.
  std::string tied_head;
  const bool whole_model = model.layout().stages == 1;
  for (const std::string& name : index.names()) {
    if (used.count(name) || family_of(config).is_known_buffer(name)) continue;
    if (std::any_of(quantized_prefixes.begin(), quantized_prefixes.end(),
                    [&](const std::string& prefix) { return name.rfind(prefix, 0) == 0; }))
      continue;
    if (config.tie_word_embeddings && name == std::string(family_of(config).head) + ".weight") {
      tied_head = name;
      continue;
    }
    if (!whole_model) continue;
    ANVIL_FAIL(index.file_of(name).path(), ": unexpected tensor '", name, "' ", shape_text(index.info(name).shape),
               " — the ", config.model_type, " model in config.json has no such parameter (a different "
               "architecture, or a config.json that does not match these weights)");
  }

  for (Param* p : params) {
    if (skipped(*p)) continue;
    const std::string name = file_name(p->name);
    Tensor w = index.get_f32(name);
    if (is_conv1d(config, p->name)) w = w.transpose(0, 1);
    master_weight(*p).copy_(p->shard.sharded() ? take_shard(*p, w.contiguous()) : w);
    refresh_value(*p);
  }

  if (!tied_head.empty() && model.is_first_stage()) {  // the first stage holds the embedding
    const Param& embedding = *params.front();
    Tensor head = index.get_f32(tied_head);
    if (embedding.shard.sharded()) head = take_shard(embedding, head);  // compare this rank's vocabulary rows
    const Tensor emb = host_f32(master_weight(embedding)).contiguous();
    ANVIL_CHECK(head.shape() == emb.shape() && std::memcmp(head.data<float>(), emb.data<float>(), head.nbytes()) == 0,
                index.file_of(tied_head).path(), ": tensor 'lm_head.weight' differs from the embedding '",
                file_name(params.front()->name), "', but config.json says tie_word_embeddings = true — set "
                "tie_word_embeddings false to load a separate head");
  }
}

namespace {
constexpr const char* kMedusaFile = "medusa_lm_head.safetensors";
std::string medusa_key(const std::string& param_name) {  // the state dict of Medusa's medusa_head module
  return param_name.substr(std::string(MedusaHeads::kPrefix).size() + 1);
}
}  // namespace

void save_medusa_hf(const MedusaHeads& heads, const std::string& dir, const std::string& base) {
  TensorMap tensors;
  for (Param* p : const_cast<MedusaHeads&>(heads).params()) tensors.emplace(medusa_key(p->name), host_f32(master_weight(*p)));
  std::error_code ec;
  fs::create_directories(dir, ec);
  ANVIL_CHECK(!ec, "cannot create ", dir, ": ", ec.message());
  write_safetensors((fs::path(dir) / kMedusaFile).string(), tensors, {{"format", "pt"}});
  const fs::path config = fs::path(dir) / "config.json";
  nlohmann::json j = nlohmann::json::object();
  if (fs::is_regular_file(config, ec)) j = nlohmann::json::parse(std::ifstream(config));
  j["medusa_num_heads"] = heads.heads();
  j["medusa_num_layers"] = heads.layers();
  j["base_model_name_or_path"] = base;
  write_json_file(config.string(), j);
}

void load_medusa_hf(MedusaHeads& heads, const std::string& dir) {
  const std::string path = (fs::path(dir) / kMedusaFile).string();
  std::error_code ec;
  ANVIL_CHECK(fs::is_regular_file(path, ec), "no Medusa heads in ", dir, ": ", kMedusaFile, " is missing — export "
              "them with `anvil convert --from MEDUSA_RUN --to hf DIR`");
  const fs::path config = fs::path(dir) / "config.json";
  if (fs::is_regular_file(config, ec)) {
    const nlohmann::json j = nlohmann::json::parse(std::ifstream(config), nullptr, false);
    ANVIL_CHECK(!j.is_discarded(), config.string(), " is not valid JSON");
    if (j.contains("medusa_num_heads"))
      ANVIL_CHECK(j["medusa_num_heads"].is_number_integer() && j["medusa_num_heads"].get<int64_t>() == heads.heads(),
                  config.string(), ": medusa_num_heads is ", j["medusa_num_heads"].dump(), " but the heads being loaded "
                  "are ", heads.heads(), " — build them with medusa.num_heads: ", j["medusa_num_heads"].dump());
    if (j.contains("medusa_num_layers"))
      ANVIL_CHECK(j["medusa_num_layers"].is_number_integer() && j["medusa_num_layers"].get<int64_t>() == heads.layers(),
                  config.string(), ": medusa_num_layers is ", j["medusa_num_layers"].dump(), " but the heads being "
                  "loaded have ", heads.layers(), " — build them with medusa.num_layers: ", j["medusa_num_layers"].dump());
  }
  const SafetensorsFile file = SafetensorsFile::open(path);
  const std::vector<Param*> params = heads.params();
  ANVIL_CHECK(file.names().size() == params.size(), path, " holds ", file.names().size(), " tensors but ",
              heads.heads(), " heads of ", heads.layers(), " ResBlocks have ", params.size(), " — the file is for "
              "other heads");
  for (Param* p : params) {  // every check first: nothing is loaded from a file that does not fit
    const std::string key = medusa_key(p->name);
    ANVIL_CHECK(file.contains(key), path, " has no tensor ", key, " (the heads' ", p->name, ")");
    ANVIL_CHECK(file.info(key).shape == logical_shape(*p), path, ": ", key, " is ", shape_text(file.info(key).shape),
                " but ", p->name, " is ", shape_text(logical_shape(*p)), " — the heads were trained on another base");
  }
  for (Param* p : params) {
    master_weight(*p).copy_(take_shard(*p, file.get_f32(medusa_key(p->name))).to(master_weight(*p).device()));
    refresh_value(*p);
  }
}

void save_hf(const TransformerLM& model, const Tokenizer* tokenizer, const std::string& dir,
             uint64_t max_shard_bytes) {
  // params() only lists the params; nothing is modified.
  std::vector<Param*> params;  // the model's own: attached modules (Medusa heads) export apart
  const_cast<TransformerLM&>(model).collect_own_params(params);
  // A Linear with an adapter or a quantized weight exports its dense merged weight under the plain
  // name, and none of its adapter factors or quantization companions.
  std::vector<LinearWeight*> linears;
  const_cast<TransformerLM&>(model).collect_linears(linears);
  std::map<std::string, const LinearWeight*> merged;  // weight name -> its Linear
  std::set<std::string> skipped;
  for (LinearWeight* lw : linears) {
    if (!lw->lora() && !lw->quantized()) continue;
    merged.emplace(lw->module_name() + ".weight", lw);
    std::vector<Param*> own;
    lw->collect_params(own);
    for (const Param* p : own)
      if (p != &lw->bias()) skipped.insert(p->name);
  }
  TensorMap tensors;
  for (const Param* p : params) {
    const auto m = merged.find(p->name);
    if (m == merged.end()) {
      if (!skipped.count(p->name)) add_hf_dense_tensor(model.config(), *p, tensors);
      continue;
    }
    Tensor v = host_f32(m->second->merged());  // the f32 weights, on the host
    if (is_conv1d(model.config(), p->name)) v = v.transpose(0, 1).contiguous();
    tensors.emplace(p->name, v);
  }
  write_hf_dir(model.config(), tensors, tokenizer, dir, nlohmann::json::object(), max_shard_bytes);
}

void add_hf_dense_tensor(const ModelConfig& config, const Param& p, TensorMap& out) {
  Tensor v = host_f32(master_weight(p));  // the f32 weights, on the host
  if (is_conv1d(config, p.name)) v = v.transpose(0, 1).contiguous();
  out.emplace(p.name, v);
}

void write_hf_dir(const ModelConfig& config, const TensorMap& tensors, const Tokenizer* tokenizer,
                  const std::string& dir, const nlohmann::json& extra_config, uint64_t max_shard_bytes) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  ANVIL_CHECK(!ec, "cannot create ", dir, ": ", ec.message());
  write_safetensors_sharded(dir, tensors, max_shard_bytes);
  nlohmann::json j = hf_config_json(config, tokenizer ? tokenizer->token_to_id(kHfEosToken) : std::nullopt);
  j.update(extra_config);
  write_json_file((fs::path(dir) / "config.json").string(), j);
  if (tokenizer) {
    tokenizer->save((fs::path(dir) / "tokenizer.json").string());
    write_json_file((fs::path(dir) / "tokenizer_config.json").string(),
                    hf_tokenizer_config(*tokenizer, config.max_position_embeddings));
  }
}

}  // namespace anvil
