// The YAML side of run-config loading: overrides, structure checks with suggestions, typed reads.
#include "trainer/config_reader.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "trainer/config_schema.h"
#include "trainer/did_you_mean.h"

namespace anvil {

const std::vector<ConfigSectionKeys>& run_config_schema() {
  static const std::vector<ConfigSectionKeys> schema = {
      {"run", {"name", "out_dir", "seed", "device", "precision", "threads", "peer_timeout"}},
      {"task", {"name"}},
      {"distill", {"target", "drafter", "loss", "temperature", "top_k", "top_p", "gamma", "parallel_tokens",
                   "anchors_per_sequence", "eagle_layers", "ttt_steps", "on_policy", "ce_weight"}},
      {"medusa", {"num_heads", "num_layers", "stage", "copy_lm_head", "heads_coefficient", "decay", "schedule",
                  "schedule_steps", "lr_multiplier", "warmup_steps", "backbone_loss"}},
      {"router", {"kind", "layers", "n", "scope", "unit", "tau", "objective", "capacity_target", "capacity_weight",
                  "train_skipped", "hidden", "windows", "search_budget", "focal_gamma"}},
      {"lora", {"modules", "r", "alpha", "dropout", "rslora", "qa_group", "init_from"}},
      {"quant", {"scheme", "block", "double_quant", "modules", "skip"}},
      {"model",
       {"config", "init_from", "type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "intermediate_size", "max_position_embeddings", "rope_theta", "norm_eps",
        "initializer_range", "tie_word_embeddings", "attention_bias", "mlp_bias", "hidden_act", "rope_scaling",
        "sliding_window"}},
      {"data", {"train", "seq_len", "valid_fraction", "shuffle", "packing"}},
      {"tokenizer", {"path"}},
      {"optimizer",
       {"name", "lr", "beta1", "beta2", "eps", "weight_decay", "decay_embeddings", "decay_norms_and_biases",
        "grad_clip", "zero", "adamw_lr_ratio", "force_adamw", "force_matrix", "muon_momentum", "muon_nesterov",
        "muon_ns_steps", "muon_scale", "muon_weight_decay", "soap_beta1", "soap_beta2", "soap_weight_decay",
        "soap_precondition_frequency", "cosmos_beta1", "cosmos_beta2", "cosmos_lr_ratio", "cosmos_rank",
        "cosmos_gamma", "cosmos_weight_decay", "cosmos_nesterov"}},
      {"schedule", {"kind", "warmup_steps", "min_lr_ratio", "decay_fraction"}},
      {"training",
       {"steps", "micro_batch_size", "grad_accum_steps", "trainable", "eval_every", "eval_batches", "sample_every",
        "sample_prompt", "sample_tokens", "sample_temperature", "sample_top_k", "sample_top_p", "ignore_index"}},
      {"parallel", {"dp", "tp", "pp", "sp", "ep", "bucket_mb", "pp_schedule"}},
      {"checkpoint", {"dir", "every", "keep", "resume", "on_preempt"}},
      {"guard", {"on_nonfinite", "spike_zscore", "spike_window", "on_spike", "max_consecutive_skips"}},
      {"logging", {"every", "jsonl", "tensorboard", "progress", "peak_tflops"}},
  };
  return schema;
}

namespace config_detail {
namespace {

using detail::concat;

// Names people bring from other frameworks or from config.json, and where they live here.
struct KeyHint {
  const char* key;
  const char* path;
  const char* note;
};
const KeyHint kKeyHints[] = {
    {"learning_rate", "optimizer.lr", ""},
    {"peak_lr", "optimizer.lr", " (the schedule's peak is optimizer.lr)"},
    {"total_steps", "training.steps", " (the schedule spans training.steps)"},
    {"max_steps", "training.steps", ""},
    {"train_steps", "training.steps", ""},
    {"warmup", "schedule.warmup_steps", ""},
    {"batch_size", "training.micro_batch_size",
     " (per replica; the global batch is micro_batch_size * grad_accum_steps * parallel.dp)"},
    {"gradient_accumulation_steps", "training.grad_accum_steps", ""},
    {"max_grad_norm", "optimizer.grad_clip", ""},
    {"clip_grad_norm", "optimizer.grad_clip", ""},
    {"betas", "optimizer.beta1", " (give beta1 and beta2 separately)"},
    {"seq_length", "data.seq_len", ""},
    {"max_seq_len", "data.seq_len", ""},
    {"block_size", "data.seq_len", ""},
    {"context_length", "data.seq_len", ""},
    {"rms_norm_eps", "model.norm_eps", " (one name for both families)"},
    {"layer_norm_epsilon", "model.norm_eps", " (one name for both families)"},
    {"layer_norm_eps", "model.norm_eps", " (one name for both families)"},
    {"model_type", "model.type", ""},
    {"n_embd", "model.hidden_size", " (the YAML uses the Llama-style names for both families)"},
    {"n_layer", "model.num_hidden_layers", " (the YAML uses the Llama-style names for both families)"},
    {"n_head", "model.num_attention_heads", " (the YAML uses the Llama-style names for both families)"},
    {"n_positions", "model.max_position_embeddings", " (the YAML uses the Llama-style names for both families)"},
    {"n_inner", "model.intermediate_size", " (the YAML uses the Llama-style names for both families)"},
    {"activation_function", "model.hidden_act", ""},
    {"tokenizer", "tokenizer.path", ""},
};

std::vector<std::string> section_names() {
  std::vector<std::string> names;
  for (const auto& s : run_config_schema()) names.push_back(s.section);
  return names;
}
const std::vector<std::string>* keys_of(const std::string& section) {
  for (const auto& s : run_config_schema())
    if (s.section == section) return &s.keys;
  return nullptr;
}

std::string suggestion_for_key(const std::string& section, const std::string& key) {
  if (const auto* keys = keys_of(section)) {
    const std::string near = closest_match(key, *keys);
    if (!near.empty()) return concat(" — did you mean ", section, ".", near, "?");
  }
  for (const KeyHint& h : kKeyHints)
    if (key == h.key) return concat(" — did you mean ", h.path, "?", h.note);
  for (const auto& s : run_config_schema())
    for (const auto& k : s.keys)
      if (k == key)
        return concat(" — did you mean ", s.section, ".", k, "? (", key, " belongs to the ", s.section, " section)");
  if (const auto* keys = keys_of(section))
    return concat(" — valid keys in ", section, ": ", join_alternatives(*keys, ", "));
  return "";
}

std::string suggestion_for_section(const std::string& name) {
  const std::string near = closest_match(name, section_names());
  if (!near.empty()) return concat(" — did you mean ", near, "?");
  for (const auto& s : run_config_schema())
    for (const auto& k : s.keys)
      if (k == name) return concat(" — did you mean ", s.section, ".", k, "? (keys go inside their section)");
  for (const KeyHint& h : kKeyHints)
    if (name == h.key) return concat(" — did you mean ", h.path, "?", h.note);
  return " — valid sections: " + join_alternatives(section_names(), ", ");
}

// The keys of a mapping, checking that each is a plain name and appears once.
std::map<std::string, Entry> entries_of(const Context& ctx, const std::string& prefix, const YAML::Node& map) {
  std::map<std::string, Entry> entries;
  for (auto it = map.begin(); it != map.end(); ++it) {
    const YAML::Node key = it->first, value = it->second;
    const std::string path_prefix = prefix.empty() ? "" : prefix + ".";
    if (!key.IsScalar())
      ctx.fail(prefix.empty() ? "(top level)" : prefix, key,
               "a key is " + shown(key) + " — keys are plain names such as steps");
    const std::string path = path_prefix + key.Scalar();
    auto [pos, fresh] = entries.emplace(key.Scalar(), Entry{key, value});
    if (!fresh)
      ctx.fail(path, key,
               concat("appears twice (first at line ", pos->second.key.Mark().line + 1,
                      ") — keep one; YAML would silently use only one of them"));
  }
  return entries;
}

// Applies one `--set a.b=value` to the YAML tree.
void apply_override(Context& ctx, YAML::Node& root, const std::string& arg) {
  const size_t eq = arg.find('=');
  if (eq == std::string::npos)
    ANVIL_FAIL("--set ", arg, ": missing '=' — write --set section.key=value, e.g. --set training.steps=1000");
  std::string key = arg.substr(0, eq);
  while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back()))) key.pop_back();
  std::vector<std::string> parts;
  std::stringstream in(key);
  for (std::string part; std::getline(in, part, '.');) parts.push_back(part);
  bool empty_part = parts.empty() || key.back() == '.';
  for (const auto& p : parts) empty_part = empty_part || p.empty();
  if (empty_part)
    ANVIL_FAIL("--set ", arg, ": '", key, "' is not a key path — write section.key=value, e.g. training.steps=1000");
  if (parts.size() > 2)
    ANVIL_FAIL("--set ", arg, ": '", key, "' has ", parts.size(),
               " levels, but run-config keys are section.key — e.g. --set ", parts[0], ".", parts[1], "=VALUE");

  const std::string text = arg.substr(eq + 1);
  YAML::Node value;
  if (text.find_first_not_of(" \t") == std::string::npos) {
    value = YAML::Node(std::string());
  } else {
    try {
      value = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      ANVIL_FAIL("--set ", arg, ": the value is not valid YAML (", e.msg,
                 ") — quote text with YAML punctuation, e.g. --set ", key, "='\"a: b\"'");
    }
  }
  if (parts.size() == 1) {
    root[parts[0]] = value;
    for (auto it = ctx.overrides.begin(); it != ctx.overrides.end();)
      it = it->first.rfind(parts[0] + ".", 0) == 0 ? ctx.overrides.erase(it) : std::next(it);
  } else {
    if (!root[parts[0]].IsMap()) root[parts[0]] = YAML::Node(YAML::NodeType::Map);
    root[parts[0]][parts[1]] = value;
  }
  ctx.overrides[key] = arg;
}

}  // namespace

const std::string* Context::override_for(const std::string& path) const {
  auto it = overrides.find(path);                                                  // this key
  if (it == overrides.end()) it = overrides.find(path.substr(0, path.find('.')));  // its whole section
  if (it == overrides.end()) {  // a section that exists only because --set created a key in it
    it = overrides.lower_bound(path + ".");
    if (it != overrides.end() && it->first.rfind(path + ".", 0) != 0) it = overrides.end();
  }
  return it == overrides.end() ? nullptr : &it->second;
}

std::string Context::where(const std::string& path, const YAML::Node& node) const {
  if (const std::string* arg = override_for(path)) return "--set " + *arg;
  if (node.IsDefined() && node.Mark().line >= 0)
    return concat(source, ":", node.Mark().line + 1, ":", node.Mark().column + 1);
  return source;
}

void Context::fail(const std::string& path, const YAML::Node& node, const std::string& message) const {
  throw Error(where(path, node) + ": " + path + ": " + message);
}

std::string shown(const YAML::Node& v) {
  if (!v.IsDefined() || v.IsNull()) return "nothing";
  if (v.IsSequence()) return "a list";
  if (v.IsMap()) return "a mapping";
  if (v.Tag() == "!") return "\"" + v.Scalar() + "\" (quoted, so a string)";
  return "'" + v.Scalar() + "'";
}

// A whole number written as 42, -100, 1e5 or 2.0.
bool parse_whole_number(const std::string& s, int64_t& out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const long long n = std::strtoll(s.c_str(), &end, 10);
  if (*end == '\0' && errno == 0) {
    out = n;
    return true;
  }
  const double d = std::strtod(s.c_str(), &end);
  if (*end != '\0' || !std::isfinite(d) || d != std::floor(d) || std::fabs(d) >= 9.0e15) return false;
  out = static_cast<int64_t>(d);
  return true;
}

void Section::fail(const std::string& key, const std::string& message) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) ctx_.fail(path(key), self_.key, message);
  const Entry& e = it->second;
  ctx_.fail(path(key), e.value.IsNull() || e.value.Mark().line < 0 ? e.key : e.value, message);
}

void Section::fail_section(const std::string& message) const { ctx_.fail(name_, self_.key, message); }

const YAML::Node& Section::scalar(const std::string& key, const char* expected, bool allow_quoted) const {
  const YAML::Node& v = value(key);
  if (v.IsNull()) fail(key, concat("has no value — write ", expected, ", or delete the line to use the default"));
  if (!v.IsScalar()) fail(key, concat("expected ", expected, ", got ", shown(v)));
  if (!allow_quoted && v.Tag() == "!")
    fail(key, concat("expected ", expected, ", got ", shown(v), " — remove the quotes"));
  return v;
}

bool Section::read(const std::string& key, int64_t& out) const {
  if (!has(key)) return false;
  if (parse_whole_number(scalar(key, "a whole number", false).Scalar(), out)) return true;
  fail(key, concat("expected a whole number, got ", shown(value(key))));
}

bool Section::read(const std::string& key, double& out) const {
  if (!has(key)) return false;
  const std::string& s = scalar(key, "a number", false).Scalar();
  char* end = nullptr;
  const double d = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || std::isnan(d) || (std::isinf(d) && s.find_first_of("iI") == std::string::npos))
    fail(key, concat("expected a number, got ", shown(value(key))));
  if (!std::isfinite(d)) fail(key, concat("must be a finite number, got ", s));
  out = d;
  return true;
}

bool Section::read(const std::string& key, bool& out) const {
  if (!has(key)) return false;
  const std::string& s = scalar(key, "true or false", false).Scalar();
  for (const char* t : {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"})
    if (s == t) return out = true, true;
  for (const char* f : {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"})
    if (s == f) return out = false, true;
  fail(key, concat("expected true or false, got ", shown(value(key))));
}

bool Section::read(const std::string& key, std::string& out) const {
  if (!has(key)) return false;
  const YAML::Node& v = value(key);
  if (v.IsNull()) fail(key, "has no value — write \"\" for an empty string, or delete the line to use the default");
  if (!v.IsScalar()) fail(key, concat("expected a string, got ", shown(v), " — quote text that contains ': ' or '#'"));
  out = v.Scalar();
  return true;
}

bool Section::read(const std::string& key, std::vector<std::string>& out) const {
  if (!has(key)) return false;
  const YAML::Node& v = value(key);
  if (v.IsScalar()) {
    out = {v.Scalar()};
    return true;
  }
  if (!v.IsSequence()) fail(key, concat("expected a list of strings such as [\"*\"], got ", shown(v)));
  out.clear();
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].IsScalar())
      fail(key, concat("item ", i + 1, " is ", shown(v[i]), " — every item must be a string such as \"model.*\""));
    out.push_back(v[i].Scalar());
  }
  return true;
}

bool Section::read_choice(const std::string& key, std::string& out, const std::vector<std::string>& choices) const {
  if (!read(key, out)) return false;
  for (const auto& c : choices)
    if (out == c) return true;
  const std::string near = closest_match(out, choices);
  fail(key, concat("'", out, "' is not valid — ", near.empty() ? "" : "did you mean " + near + "? ",
                   "valid values: ", join_alternatives(choices)));
}

std::map<std::string, Section> read_config_tree(Context& ctx, const std::string& yaml_text,
                                                const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    ANVIL_FAIL(ctx.source, ":", e.mark.line + 1, ":", e.mark.column + 1, ": not valid YAML: ", e.msg,
               " — check the indentation (spaces, not tabs) and the brackets/quotes near this line");
  }
  if (root.IsNull()) {
    ANVIL_CHECK(!overrides.empty(), ctx.source,
                ": the config is empty — a run needs at least data.train, "
                "tokenizer.path and training.steps");
    root = YAML::Node(YAML::NodeType::Map);
  }
  ANVIL_CHECK(root.IsMap(), ctx.source, ": the top level is ", shown(root),
              ", not a mapping of sections — start with e.g. `training:` on its own line");
  for (const auto& arg : overrides) apply_override(ctx, root, arg);

  // Structure first, in file order so the first problem is the one reported.
  const auto top = entries_of(ctx, "", root);
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string name = it->first.Scalar();
    const YAML::Node value = it->second;
    const auto* keys = keys_of(name);
    if (!keys) ctx.fail(name, it->first, "unknown section" + suggestion_for_section(name));
    if (!value.IsNull() && !value.IsMap())
      ctx.fail(name, value.Mark().line >= 0 ? value : it->first,
               concat("expected a mapping of keys, got ", shown(value), " — write e.g.\n  ", name, ":\n    ",
                      keys->front(), ": ..."));
    if (value.IsNull()) continue;
    (void)entries_of(ctx, name, value);  // keys are plain names, none twice
    for (auto kv = value.begin(); kv != value.end(); ++kv) {
      const std::string key = kv->first.Scalar();
      if (std::find(keys->begin(), keys->end(), key) == keys->end())
        ctx.fail(name + "." + key, kv->first, "unknown key" + suggestion_for_key(name, key));
    }
  }
  std::map<std::string, Section> sections;
  for (const auto& [name, keys] : run_config_schema()) {
    auto it = top.find(name);
    const Entry self = it == top.end() ? Entry{} : it->second;
    std::map<std::string, Entry> entries;
    if (self.value.IsMap()) entries = entries_of(ctx, name, self.value);
    sections.emplace(name, Section(ctx, name, self, std::move(entries)));
  }
  return sections;
}

}  // namespace config_detail
}  // namespace anvil
