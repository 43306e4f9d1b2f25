// Run config loading: the typed sections, their range and cross-field checks, and path resolution.
// The YAML side (overrides, unknown keys, typed reads with locations) is trainer/config_reader.cpp.
#include "trainer/config.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "models/hf_convert.h"
#include "models/layout_checks.h"
#include "trainer/checkpoint.h"
#include "trainer/config_reader.h"
#include "trainer/load_model.h"
#include "trainer/did_you_mean.h"
#include "trainer/task_names.h"

namespace anvil {
namespace fs = std::filesystem;

namespace {

using config_detail::Context;
using config_detail::parse_whole_number;
using config_detail::Section;
using config_detail::shown;
using detail::concat;

std::string abs_normal(const fs::path& p) { return fs::absolute(p).lexically_normal().string(); }

// Relative input paths: from the YAML file's directory, or from the working directory for --set.
std::string resolve_input(const Context& ctx, const Section& s, const std::string& key, const std::string& raw) {
  fs::path p(raw);
  const char* home = std::getenv("HOME");
  if (raw.rfind("~/", 0) == 0 && home) p = fs::path(home) / raw.substr(2);
  if (p.is_absolute()) return p.lexically_normal().string();
  return abs_normal((s.is_override(key) ? fs::current_path() : fs::path(ctx.base_dir)) / p);
}

std::string resolve_output(const std::string& raw) {
  const char* home = std::getenv("HOME");
  if (raw.rfind("~/", 0) == 0 && home) return abs_normal(fs::path(home) / raw.substr(2));
  return abs_normal(raw);
}

// An input path that must exist: a file, or either a file or a directory when `allow_dir`.
std::string existing_path(const Context& ctx, const Section& s, const std::string& key, const std::string& raw,
                          bool allow_dir, const std::string& fix) {
  s.require(!raw.empty(), key, "is empty — ", fix);
  const std::string resolved = resolve_input(ctx, s, key, raw);
  std::error_code ec;
  const fs::file_status st = fs::status(resolved, ec);
  if (!fs::exists(st)) {
    std::string how;
    if (resolved != raw)
      how = concat(" (resolved to ", resolved, "; relative paths start from ",
                   s.is_override(key) ? "the current directory for --set values" : "the config file's directory", ")");
    s.fail(key, concat("file not found: ", raw, how, " — ", fix));
  }
  if (!allow_dir && fs::is_directory(st)) s.fail(key, concat(resolved, " is a directory, not a file — ", fix));
  return resolved;
}

// An output directory: fine if absent (created later), an error if it is an existing file.
std::string output_dir(const Section& s, const std::string& key, const std::string& raw) {
  s.require(!raw.empty(), key, "is empty — give a directory such as runs/demo");
  const std::string resolved = resolve_output(raw);
  std::error_code ec;
  s.require(!fs::exists(resolved, ec) || fs::is_directory(resolved, ec), key, resolved,
            " exists and is not a directory — choose another path");
  return resolved;
}

// ---- the sections ----

void parse_run(const Section& s, const std::string& source, RunSection& run) {
  run.name = fs::path(source).stem().string();
  if (run.name.empty()) run.name = "run";
  if (s.read("name", run.name)) {
    s.require(!run.name.empty(), "name", "is empty — name the run, e.g. name: demo");
    s.require(run.name.find('/') == std::string::npos, "name", "'", run.name,
              "' contains '/' — the name is a single directory name; put the location in run.out_dir");
  }
  std::string out = "runs/" + run.name;
  s.read("out_dir", out);
  run.out_dir = output_dir(s, "out_dir", out);
  s.read("seed", run.seed);
  s.require(run.seed >= 0, "seed", "must be >= 0, got ", run.seed);
  if (s.read("device", run.device) && run.device != "cpu" && run.device != "cuda") {
    std::string hint;
    if (run.device.rfind("cuda:", 0) == 0)
      hint = "write cuda; each rank uses the GPU of its local rank. ";
    else if (run.device == "gpu")
      hint = "did you mean cuda? ";
    else if (const std::string near = closest_match(run.device, {"cpu", "cuda"}); !near.empty())
      hint = "did you mean " + near + "? ";
    s.fail("device", concat("'", run.device, "' is not a device — ", hint, "valid values: cpu or cuda"));
  }
#ifndef ANVIL_WITH_CUDA
  s.require(run.device != "cuda", "device",
            "cuda, but this build of anvil has no CUDA backend — use device: cpu, or rebuild where nvcc is "
            "found (/usr/local/cuda)");
#endif
  // The compute dtype of weights and activations: bf16 (with f32 master weights, gradients and
  // optimizer state) on a GPU, f32 on the CPU, whose kernels are f32 only.
  run.precision = run.device == "cuda" ? "bf16" : "fp32";
  s.read_choice("precision", run.precision, {"fp32", "bf16"});
  s.require(!(run.precision == "bf16" && run.device == "cpu"), "precision",
            "bf16 needs run.device: cuda — the CPU backend computes in f32 only; set run.precision: fp32 (or leave "
            "it out: the default is fp32 on cpu, bf16 on cuda)");
  s.read("threads", run.threads);
  s.require(run.threads >= 0, "threads", "must be >= 0 (0 = all cores), got ", run.threads);
  s.read("peer_timeout", run.peer_timeout);
  s.require(run.peer_timeout == 0 || run.peer_timeout >= 1, "peer_timeout",
            "must be 0 (no watchdog) or at least 1 second, got ", run.peer_timeout);
}

// A YAML map of scalars as the JSON object config.json would hold (numbers stay numbers).
nlohmann::json scalar_map_to_json(const Section& s, const std::string& key) {
  const YAML::Node& node = s.value(key);
  if (node.IsNull() || (node.IsScalar() && node.Tag() != "!" && (node.Scalar() == "none" || node.Scalar() == "null")))
    return nullptr;
  if (!node.IsMap())
    s.fail(key, concat("expected none or a map such as {rope_type: llama3, factor: 8.0, low_freq_factor: 1.0, "
                       "high_freq_factor: 4.0, original_max_position_embeddings: 8192}, got ", shown(node)));
  nlohmann::json j = nlohmann::json::object();
  for (const auto& entry : node) {
    const std::string name = entry.first.as<std::string>();
    const YAML::Node& v = entry.second;
    if (!v.IsScalar()) s.fail(key, concat("field '", name, "' must be a single value, got ", shown(v)));
    const std::string text = v.Scalar();
    char* end = nullptr;
    if (v.Tag() != "!" && !text.empty()) {
      const long long whole = std::strtoll(text.c_str(), &end, 10);
      if (*end == '\0') { j[name] = static_cast<int64_t>(whole); continue; }
      const double real = std::strtod(text.c_str(), &end);
      if (*end == '\0') { j[name] = real; continue; }
    }
    j[name] = text;
  }
  return j;
}

void parse_model(const Context& ctx, const Section& s, ModelSection& m) {
  std::string type;
  const bool has_type = s.read_choice("type", type, {"gpt2", "llama", "qwen2", "mistral"});
  ModelConfig base;
  std::string init_from;
  if (s.read("init_from", init_from) && !init_from.empty()) {
    s.require(!s.has("config"), "init_from", "and model.config both give the architecture — keep init_from (its "
              "config is used) and remove model.config");
    m.init_from = existing_path(ctx, s, "init_from", init_from, true,
                                "point model.init_from at a Hugging Face model directory (config.json + "
                                "model.safetensors) or an anvil checkpoint or run directory");
    std::error_code ec;
    s.require(fs::is_directory(m.init_from, ec), "init_from", m.init_from, " is not a directory — give a Hugging "
              "Face model directory (config.json + model.safetensors) or an anvil checkpoint or run directory");
    std::string checkpoint;  // an anvil checkpoint directory, when init_from is one
    if (!fs::is_regular_file(fs::path(m.init_from) / "config.json", ec)) {
      try {
        checkpoint = find_checkpoint_dir(m.init_from);
      } catch (const Error& not_checkpoint) {
        std::string not_hf = "no config.json";
        try {
          read_hf_config(m.init_from);
        } catch (const Error& e) {
          not_hf = e.what();
        }
        s.fail("init_from", concat(m.init_from, " is neither a Hugging Face directory (", not_hf,
                                   ") nor an anvil checkpoint (", not_checkpoint.what(), ")"));
      }
    }
    try {
      if (checkpoint.empty()) {
        m.config_file = abs_normal(fs::path(m.init_from) / "config.json");
        base = read_hf_config(m.init_from);
      } else {  // the architecture stored with the checkpoint's weights
        m.init_from = abs_normal(checkpoint);
        m.config_file = abs_normal(fs::path(m.init_from) / kCheckpointFile);
        base = ModelConfig::from_json(nlohmann::json::parse(read_checkpoint_meta(m.init_from).model_config_json),
                                      m.config_file);
      }
    } catch (const Error& e) {
      s.fail("init_from", concat(e.what()));
    }
    s.require(!has_type || type == base.model_type, "type", "'", type, "' disagrees with model_type '", base.model_type,
              "' in ", m.config_file, " — remove model.type or make them agree");
  } else if (s.has("config")) {
    std::string raw;
    s.read("config", raw);
    m.config_file = existing_path(ctx, s, "config", raw, false, "point model.config at a Hugging Face config.json");
    try {
      base = ModelConfig::from_file(m.config_file);
    } catch (const Error& e) {
      s.fail("config", concat(e.what()));
    }
    s.require(!has_type || type == base.model_type, "type", "'", type, "' disagrees with model_type '", base.model_type,
              "' in ", m.config_file, " — remove model.type or make them agree");
  } else {
    base = ModelConfig::preset(has_type ? type : "llama");
  }
  static_cast<ModelConfig&>(m) = base;

  if (s.has("vocab_size")) {
    const YAML::Node& v = s.value("vocab_size");
    int64_t n = 0;
    if (!(v.IsScalar() && v.Scalar() == "auto") &&
        (!v.IsScalar() || v.Tag() == "!" || !parse_whole_number(v.Scalar(), n)))
      s.fail("vocab_size", concat("expected a whole number or auto, got ", shown(v)));
    s.require(n >= 0, "vocab_size", "must be positive (or auto / 0 to take the tokenizer's), got ", n);
    m.vocab_size_auto = n == 0;
    if (n > 0) m.vocab_size = n;
  }
  if (m.vocab_size_auto) m.vocab_size = 0;
  s.read("hidden_size", m.hidden_size);
  s.read("num_hidden_layers", m.num_hidden_layers);
  s.read("num_attention_heads", m.num_attention_heads);
  s.read("num_key_value_heads", m.num_key_value_heads);
  s.read("head_dim", m.head_dim);
  s.read("intermediate_size", m.intermediate_size);
  s.read("max_position_embeddings", m.max_position_embeddings);
  s.read("rope_theta", m.rope_theta);
  s.read("norm_eps", m.norm_eps);
  s.read("initializer_range", m.initializer_range);
  s.read("tie_word_embeddings", m.tie_word_embeddings);
  s.read("attention_bias", m.attention_bias);
  s.read("mlp_bias", m.mlp_bias);
  s.read("hidden_act", m.hidden_act);
  s.read("sliding_window", m.sliding_window);
  if (s.has("rope_scaling")) {
    try {
      m.rope_scaling = RopeScaling::from_json(scalar_map_to_json(s, "rope_scaling"), "rope_scaling");
    } catch (const Error& e) {
      std::string msg = e.what();
      const std::string prefix = "rope_scaling: unsupported field value rope_scaling = ";
      if (msg.rfind(prefix, 0) == 0) msg = "unsupported value " + msg.substr(prefix.size());
      s.fail("rope_scaling", msg);
    }
  }
  if (m.config_file.empty()) {  // Hugging Face's derived defaults (a config.json has them resolved)
    if (!s.has("num_key_value_heads")) m.num_key_value_heads = m.num_attention_heads;
    if (m.model_type == "gpt2" && !s.has("intermediate_size")) m.intermediate_size = 4 * m.hidden_size;
  }
  s.require(m.head_dim >= 0, "head_dim", "must be >= 0 (0 = hidden_size / num_attention_heads), got ", m.head_dim);
  s.require(m.initializer_range >= 0, "initializer_range", "must be >= 0, got ", m.initializer_range);

  ModelConfig check = m;
  if (m.vocab_size_auto) check.vocab_size = 1;  // settled later by resolve_vocab_size
  try {
    check.validate();
  } catch (const Error& e) {
    std::string msg = e.what();
    const std::string prefix = "model config: ";
    if (msg.rfind(prefix, 0) == 0) msg = msg.substr(prefix.size());
    if (!m.config_file.empty()) msg += " (architecture from " + m.config_file + ")";
    // Point at the field the message names first, when the YAML sets it.
    std::string at;
    size_t first = std::string::npos;
    for (const auto& [key, entry] : s.entries()) {
      const size_t pos = msg.find(key + " =");
      if (pos < first) first = pos, at = key;
    }
    if (!at.empty()) s.fail(at, msg);
    s.fail_section(msg);
  }
  if (m.head_dim == 0) m.head_dim = m.resolved_head_dim();
}

void parse_data(const Context& ctx, const Section& s, const ModelSection& model, DataSection& d) {
  std::string raw;
  if (!s.read("train", raw))
    s.fail("train",
           "is required but missing — add `train: path/to/tokens.h5` under data: (make one with `anvil "
           "data prepare`)");
  d.train = raw == "none" ? raw
                          : existing_path(ctx, s, "train", raw, false,
                                          "check the path, or make the token store with `anvil data prepare`");
  d.seq_len = model.max_position_embeddings;
  s.read("seq_len", d.seq_len);
  s.require(d.seq_len >= 1, "seq_len", "must be at least 1, got ", d.seq_len);
  s.require(d.seq_len <= model.max_position_embeddings, "seq_len", d.seq_len,
            " exceeds model.max_position_embeddings = ", model.max_position_embeddings,
            model.config_file.empty() ? "" : " (from " + model.config_file + ")",
            " — lower data.seq_len or raise model.max_position_embeddings");
  s.read("valid_fraction", d.valid_fraction);
  s.require(d.valid_fraction >= 0 && d.valid_fraction < 1, "valid_fraction", "must be in [0, 1), got ",
            d.valid_fraction, " — e.g. 0.01 keeps 1% of the documents for evaluation");
  s.read("shuffle", d.shuffle);
  s.read_choice("packing", d.packing, {"none", "documents"});
}

void parse_tokenizer(const Context& ctx, const Section& s, const ModelSection& model, TokenizerSection& t) {
  std::string raw;
  if (!s.read("path", raw)) {
    const std::string hf = model.init_from.empty() ? "" : abs_normal(fs::path(model.init_from) / "tokenizer.json");
    std::error_code ec;
    if (!hf.empty() && fs::is_regular_file(hf, ec)) {
      t.path = hf;
      return;
    }
    s.fail("path", hf.empty() ? "is required but missing — add `path: path/to/tokenizer.json` under tokenizer:"
                              : "is required but missing — model.init_from has no tokenizer.json (" + hf +
                                    "); add `path: path/to/tokenizer.json` under tokenizer:");
  }
  t.path =
      existing_path(ctx, s, "path", raw, false, "check the path, or train a tokenizer with `anvil tokenizer train`");
}

void parse_optimizer(const Section& s, OptimizerSection& o) {
  s.read_choice("name", o.name, {"adamw", "muon", "soap", "cosmos"});
  s.read("lr", o.lr);
  s.require(o.lr > 0, "lr", "must be positive, got ", o.lr, " — typical values are 1e-4 to 3e-3");
  AdamWConfig& a = o.adamw;
  s.read("beta1", a.beta1);
  s.require(a.beta1 >= 0 && a.beta1 < 1, "beta1", "must be in [0, 1), got ", a.beta1, " — typically 0.9");
  s.read("beta2", a.beta2);
  s.require(a.beta2 >= 0 && a.beta2 < 1, "beta2", "must be in [0, 1), got ", a.beta2, " — typically 0.95 or 0.999");
  s.read("eps", a.eps);
  s.require(a.eps > 0, "eps", "must be positive, got ", a.eps, " — typically 1e-8");
  s.read("weight_decay", a.weight_decay);
  s.require(a.weight_decay >= 0, "weight_decay", "must be >= 0, got ", a.weight_decay);
  s.read("decay_embeddings", a.decay_embeddings);
  s.read("decay_norms_and_biases", a.decay_vectors);
  s.read("grad_clip", o.grad_clip);
  s.require(o.grad_clip >= 0, "grad_clip", "must be >= 0 (0 turns clipping off), got ", o.grad_clip);
  s.read("zero", o.zero);
  s.require(o.zero >= 0 && o.zero <= 2, "zero", "must be 0 (no sharding), 1 (optimizer state sharded over dp) or 2 "
            "(optimizer state and gradients sharded), got ", o.zero);
  o.adamw_lr_ratio = o.name == "muon" ? 0.015 : 1.0;
  s.read("adamw_lr_ratio", o.adamw_lr_ratio);
  s.require(o.adamw_lr_ratio > 0, "adamw_lr_ratio", "must be positive, got ", o.adamw_lr_ratio,
            " — the AdamW group (embeddings, head, norms, biases) steps at lr * adamw_lr_ratio");
  s.read("force_adamw", o.force_adamw);
  s.read("force_matrix", o.force_matrix);
  auto unit_interval = [&](const char* key, double& v) {
    s.read(key, v);
    s.require(v >= 0 && v < 1, key, "must be in [0, 1), got ", v);
  };
  auto non_negative = [&](const char* key, double& v) {
    s.read(key, v);
    s.require(v >= 0, key, "must be >= 0, got ", v);
  };
  MuonConfig& mu = o.muon;
  unit_interval("muon_momentum", mu.momentum);
  s.read("muon_nesterov", mu.nesterov);
  int64_t ns_steps = mu.ns.steps;
  s.read("muon_ns_steps", ns_steps);
  s.require(ns_steps >= 1 && ns_steps <= 20, "muon_ns_steps", "must be in [1, 20], got ", ns_steps, " — 5 is standard");
  mu.ns.steps = static_cast<int>(ns_steps);
  std::string scale = mu.scale == MuonScale::Keller ? "keller" : "moonlight";
  if (s.read_choice("muon_scale", scale, {"keller", "moonlight"})) mu.scale = parse_muon_scale(scale);
  non_negative("muon_weight_decay", mu.weight_decay);
  SoapConfig& so = o.soap;
  unit_interval("soap_beta1", so.beta1);
  unit_interval("soap_beta2", so.beta2);
  non_negative("soap_weight_decay", so.weight_decay);
  s.read("soap_precondition_frequency", so.precondition_frequency);
  s.require(so.precondition_frequency >= 1, "soap_precondition_frequency", "must be >= 1, got ",
            so.precondition_frequency);
  CosmosConfig& co = o.cosmos;
  unit_interval("cosmos_beta1", co.beta1);
  unit_interval("cosmos_beta2", co.beta2);
  s.read("cosmos_lr_ratio", co.lr_ratio);
  s.require(co.lr_ratio > 0, "cosmos_lr_ratio", "must be positive, got ", co.lr_ratio);
  s.read("cosmos_rank", co.rank);
  s.require(co.rank >= 1, "cosmos_rank", "must be >= 1, got ", co.rank);
  non_negative("cosmos_gamma", co.gamma);
  non_negative("cosmos_weight_decay", co.weight_decay);
  s.read("cosmos_nesterov", co.nesterov);
}

void parse_training(const Section& s, const DataSection& data, TrainingSection& t) {
  if (!s.read("steps", t.steps))
    s.fail("steps", "is required but missing — add `steps: 1000` (optimizer steps) under training:");
  s.require(t.steps >= 1, "steps", "must be at least 1, got ", t.steps);
  s.read("micro_batch_size", t.micro_batch_size);
  s.require(t.micro_batch_size >= 1, "micro_batch_size", "must be at least 1, got ", t.micro_batch_size);
  s.read("grad_accum_steps", t.grad_accum_steps);
  s.require(t.grad_accum_steps >= 1, "grad_accum_steps", "must be at least 1 (1 = no accumulation), got ",
            t.grad_accum_steps);
  if (s.read("trainable", t.trainable)) {
    s.require(!t.trainable.empty(), "trainable",
              "is an empty list, which would train nothing — use [\"*\"] to "
              "train every parameter");
    for (const auto& p : t.trainable)
      s.require(!p.empty(), "trainable", "contains an empty pattern — remove it (\"*\" matches every parameter)");
  }
  s.read("eval_every", t.eval_every);
  s.require(t.eval_every >= 0, "eval_every", "must be >= 0 (0 = never), got ", t.eval_every);
  s.require(t.eval_every == 0 || data.valid_fraction > 0, "eval_every", t.eval_every,
            " asks for evaluation, but data.valid_fraction = 0 leaves no validation split — set "
            "data.valid_fraction (e.g. 0.01) or training.eval_every: 0");
  s.read("eval_batches", t.eval_batches);
  s.require(t.eval_batches >= 1, "eval_batches", "must be at least 1, got ", t.eval_batches);
  s.read("sample_every", t.sample_every);
  s.require(t.sample_every >= 0, "sample_every", "must be >= 0 (0 = never), got ", t.sample_every);
  s.read("sample_prompt", t.sample_prompt);
  s.read("sample_tokens", t.sample_tokens);
  s.require(t.sample_tokens >= 1, "sample_tokens", "must be at least 1, got ", t.sample_tokens);
  s.read("sample_temperature", t.sample_temperature);
  s.require(t.sample_temperature >= 0, "sample_temperature", "must be >= 0 (0 = greedy), got ", t.sample_temperature);
  s.read("sample_top_k", t.sample_top_k);
  s.require(t.sample_top_k >= 0, "sample_top_k", "must be >= 0 (0 = no top-k filter), got ", t.sample_top_k);
  s.read("sample_top_p", t.sample_top_p);
  s.require(t.sample_top_p > 0 && t.sample_top_p <= 1, "sample_top_p",
            "must be in (0, 1] (1 = no nucleus filter), got ", t.sample_top_p);
  s.read("ignore_index", t.ignore_index);
  s.require(t.ignore_index < 0, "ignore_index", "must be negative so that it never equals a real token id, got ",
            t.ignore_index, " — the usual value is -100");
}

void parse_schedule(const Section& s, const OptimizerSection& o, const TrainingSection& t, ScheduleConfig& c) {
  s.read_choice("kind", c.kind, {"constant", "cosine", "linear", "wsd"});
  s.read("warmup_steps", c.warmup_steps);
  s.require(c.warmup_steps >= 0, "warmup_steps", "must be >= 0, got ", c.warmup_steps);
  s.require(c.warmup_steps <= t.steps, "warmup_steps", c.warmup_steps, " exceeds training.steps = ", t.steps,
            " — lower the warmup or train longer");
  s.read("min_lr_ratio", c.min_lr_ratio);
  s.require(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1], got ", c.min_lr_ratio,
            " — it is the final learning rate as a fraction of optimizer.lr");
  s.read("decay_fraction", c.decay_fraction);
  s.require(c.decay_fraction > 0 && c.decay_fraction <= 1, "decay_fraction", "must be in (0, 1], got ",
            c.decay_fraction, " — the share of training.steps that wsd spends decaying");
  c.peak_lr = o.lr;
  c.total_steps = t.steps;
  try {
    validate_schedule(c);
  } catch (const Error& e) {
    s.fail_section(e.what());
  }
}

void parse_parallel(const Section& s, const ModelSection& model, ParallelSection& p) {
  const std::pair<const char*, int64_t*> axes[] = {{"dp", &p.dp}, {"tp", &p.tp}, {"pp", &p.pp}, {"sp", &p.sp}};
  for (const auto& [key, degree] : axes) {
    s.read(key, *degree);
    s.require(*degree >= 1, key, "must be at least 1 (1 = not split along this axis), got ", *degree);
  }
  // Expert parallelism splits the experts of MoE layers over ranks carved out of dp.
  s.read("ep", p.ep);
  s.require(p.ep >= 1, "ep", "must be at least 1 (1 = experts not split), got ", p.ep);
  s.require(p.ep == 1 || model_experts(model) > 0, "ep", p.ep, " expert-parallel ranks need a model with experts, but"
            " this ", model.model_type, " model is dense — set parallel.ep: 1 and keep those ranks on parallel.dp");
  s.require(p.dp % p.ep == 0, "ep", p.ep, " does not divide parallel.dp = ", p.dp,
            " — expert parallelism is carved out of the data-parallel ranks, so pick an ep that divides dp");
  s.read("bucket_mb", p.bucket_mb);
  s.require(p.bucket_mb > 0 && std::isfinite(p.bucket_mb), "bucket_mb",
            "must be positive (gradient bucket size in MB, e.g. 25), got ", p.bucket_mb);
  s.read("pp_schedule", p.pp_schedule);
  s.require(p.pp_schedule == "1f1b" || p.pp_schedule == "gpipe", "pp_schedule",
            "must be 1f1b or gpipe (the pipeline schedule), got '", p.pp_schedule, "'");
  s.require(p.pp <= model.num_hidden_layers, "pp", p.pp,
            " pipeline stages exceed model.num_hidden_layers = ", model.num_hidden_layers,
            " — every stage needs at least one layer");
}

void parse_checkpoint(const Context& ctx, const Section& s, const RunSection& run, CheckpointSection& c) {
  std::string dir;
  if (s.read("dir", dir) && !dir.empty())
    c.dir = output_dir(s, "dir", dir);
  else
    c.dir = abs_normal(fs::path(run.out_dir) / "checkpoints");
  s.read("every", c.every);
  s.require(c.every >= 0, "every", "must be >= 0 (0 = only at the end), got ", c.every);
  s.read("keep", c.keep);
  s.require(c.keep >= 0, "keep", "must be >= 0 (0 = keep all), got ", c.keep);
  if (s.read("resume", c.resume) && c.resume != "auto" && c.resume != "none") {
    const std::string near = closest_match(c.resume, {"auto", "none"});
    c.resume = existing_path(ctx, s, "resume", c.resume, true,
                             near.empty() ? "use auto (newest checkpoint in checkpoint.dir, if any), none (start "
                                            "fresh) or an existing checkpoint path"
                                          : "did you mean " + near + "? (auto | none | a checkpoint path)");
  }
  s.read("on_preempt", c.on_preempt);
}

void parse_guard(const Section& s, GuardConfig& g) {
  s.read_choice("on_nonfinite", g.on_nonfinite, {"skip", "stop"});
  s.read_choice("on_spike", g.on_spike, {"skip", "stop"});
  s.read("spike_zscore", g.spike_zscore);
  s.require(g.spike_zscore == 0 || g.spike_zscore >= 1, "spike_zscore",
            "must be 0 (no spike test) or at least 1 (standard deviations; 6 is a common choice), got ", g.spike_zscore);
  s.read("spike_window", g.spike_window);
  s.require(g.spike_window >= 2, "spike_window", "must be at least 2 steps, got ", g.spike_window);
  s.read("max_consecutive_skips", g.max_consecutive_skips);
  s.require(g.max_consecutive_skips >= 0, "max_consecutive_skips", "must be >= 0 (0 = no limit), got ",
            g.max_consecutive_skips);
}

void parse_logging(const Section& s, LoggingSection& l) {
  s.read("every", l.every);
  s.require(l.every >= 1, "every", "must be at least 1 (log every N steps), got ", l.every);
  s.read("jsonl", l.jsonl);
  s.read("tensorboard", l.tensorboard);
  s.read_choice("progress", l.progress, {"auto", "always", "never"});
  s.read("peak_tflops", l.peak_tflops);
  s.require(l.peak_tflops >= 0, "peak_tflops", "must be >= 0 (0 = look the device up in the peak table), got ",
            l.peak_tflops);
}

// task distill's section. For any other task the section must stay at its defaults (a resolved
// config.yaml writes it out for every task): a key set away from them would silently do nothing.
void parse_distill(const Context& ctx, const Section& s, const std::string& task, DistillSection& d) {
  const DistillSection defaults;
  std::string raw;
  s.read("target", raw);
  s.read_choice("drafter", d.drafter, {"standalone", "parallelspec", "eagle"});
  s.read_choice("loss", d.loss, {"forward_kl", "reverse_kl", "tvd", "jsd", "ce"});
  s.read("temperature", d.temperature);
  s.read("top_k", d.top_k);
  s.read("top_p", d.top_p);
  s.read("gamma", d.gamma);
  s.read("parallel_tokens", d.parallel_tokens);
  s.read("anchors_per_sequence", d.anchors_per_sequence);
  std::vector<std::string> layers;
  s.read("eagle_layers", layers);
  d.eagle_layers.clear();
  for (const std::string& text : layers) {
    char* end = nullptr;
    const long long layer = std::strtoll(text.c_str(), &end, 10);
    s.require(!text.empty() && *end == '\0' && layer >= 0, "eagle_layers", "holds '", text,
              "', which is not a layer index — list three target layer indices, e.g. [1, 8, 14]");
    d.eagle_layers.push_back(layer);
  }
  s.read("ttt_steps", d.ttt_steps);
  s.read("on_policy", d.on_policy);
  s.read("ce_weight", d.ce_weight);
  if (task != "distill") {
    const std::pair<const char*, bool> changed[] = {
        {"target", !raw.empty()},
        {"drafter", d.drafter != defaults.drafter},
        {"loss", d.loss != defaults.loss},
        {"temperature", d.temperature != defaults.temperature},
        {"top_k", d.top_k != defaults.top_k},
        {"top_p", d.top_p != defaults.top_p},
        {"gamma", d.gamma != defaults.gamma},
        {"parallel_tokens", d.parallel_tokens != defaults.parallel_tokens},
        {"anchors_per_sequence", d.anchors_per_sequence != defaults.anchors_per_sequence},
        {"eagle_layers", !d.eagle_layers.empty()},
        {"ttt_steps", d.ttt_steps != defaults.ttt_steps},
        {"on_policy", d.on_policy != defaults.on_policy},
        {"ce_weight", d.ce_weight != defaults.ce_weight}};
    for (const auto& [key, set] : changed)
      s.require(!set, key, "is set but task.name is ", task, " — the distill section configures task.name: distill "
                "only; set task.name: distill or remove the distill section");
    return;
  }
  if (raw.empty())
    s.fail("target", "is required for task.name: distill but missing — add `target: runs/demo` (an anvil run or "
           "checkpoint directory, or a Hugging Face directory) under distill:");
  d.target = existing_path(ctx, s, "target", raw, true,
                           "point distill.target at the frozen target: an anvil checkpoint or run directory, or a "
                           "Hugging Face directory (config.json + model.safetensors)");
  std::error_code ec;
  s.require(fs::is_directory(d.target, ec), "target", d.target, " is not a directory — give an anvil checkpoint or "
            "run directory, or a Hugging Face directory (config.json + model.safetensors)");
  s.require(d.temperature > 0, "temperature", "must be positive, got ", d.temperature,
            " — use the temperature the drafter will decode at (1.0 = the model's own distribution)");
  s.require(d.top_k >= 0, "top_k", "must be >= 0 (0 = no top-k filter), got ", d.top_k);
  s.require(d.top_p > 0 && d.top_p <= 1, "top_p", "must be in (0, 1] (1 = no nucleus filter), got ", d.top_p);
  s.require(d.loss != "reverse_kl" || (d.top_k == 0 && d.top_p == 1), "loss",
            "reverse_kl is infinite wherever the drafter puts mass outside the filtered target's support (top_k = ",
            d.top_k, ", top_p = ", d.top_p, ") — drop distill.top_k / distill.top_p, or use forward_kl, tvd or jsd");
  s.require(d.parallel_tokens >= 1, "parallel_tokens", "must be at least 1 (the drafter's mask tokens), got ",
            d.parallel_tokens);
  s.require(d.anchors_per_sequence >= 0, "anchors_per_sequence", "must be >= 0 (0 = as many as fit), got ",
            d.anchors_per_sequence);
  s.require(d.gamma >= 1, "gamma", "must be at least 1 (the draft length tau_sim is reported for), got ", d.gamma);
  s.require(d.drafter == "parallelspec" ||
                (d.parallel_tokens == defaults.parallel_tokens && d.anchors_per_sequence == defaults.anchors_per_sequence),
            "parallel_tokens", "and anchors_per_sequence configure drafter: parallelspec only, but drafter is ",
            d.drafter, " — set drafter: parallelspec or remove them");
  s.require(d.drafter == "eagle" || (d.eagle_layers.empty() && d.ttt_steps == defaults.ttt_steps), "eagle_layers",
            "and ttt_steps configure drafter: eagle only, but drafter is ", d.drafter,
            " — set drafter: eagle or remove them");
  s.require(d.eagle_layers.empty() || d.eagle_layers.size() == 3, "eagle_layers", "must list three target layers "
            "(low, middle, high), got ", d.eagle_layers.size(), " — or leave it empty for {1, L/2, L-2}");
  s.require(d.ttt_steps >= 1 && d.ttt_steps <= 8, "ttt_steps", "must be in [1, 8] (1 = no training-time test; "
            "EAGLE-3 trains 7), got ", d.ttt_steps);
  s.require(d.on_policy >= 0 && d.on_policy <= 1, "on_policy", "must be in [0, 1] (the share of micro-batches "
            "sampled from the drafter; 0 = off), got ", d.on_policy);
  s.require(d.on_policy == 0 || d.drafter == "standalone", "on_policy", "samples from a standalone drafter only, "
            "but drafter is ", d.drafter, " — set on_policy: 0 or drafter: standalone");
  s.require(std::isfinite(d.ce_weight) && d.ce_weight >= 0, "ce_weight", "must be finite and >= 0 (the weight of "
            "the cross-entropy added to the divergence; 0 = off), got ", d.ce_weight);
  s.require(d.ce_weight == 0 || d.loss != "ce", "ce_weight", "adds cross-entropy to a divergence, but loss is ce "
            "(cross-entropy alone) — set loss: forward_kl (LREC's KL + CE) or remove ce_weight");
  s.require(d.ce_weight == 0 || d.drafter != "eagle", "ce_weight", "applies to standalone and parallelspec drafters "
            "(an EAGLE drafter's loss is its own) — remove ce_weight or set drafter: standalone");
}

// task medusa's section; for any other task it must stay at its defaults (as distill's).
void parse_medusa(const Section& s, const std::string& task, MedusaSection& m) {
  const MedusaSection defaults;
  s.read("num_heads", m.num_heads);
  s.read("num_layers", m.num_layers);
  s.read("stage", m.stage);
  s.read("copy_lm_head", m.copy_lm_head);
  s.read("heads_coefficient", m.heads_coefficient);
  s.read("decay", m.decay);
  s.read_choice("schedule", m.schedule, {"constant", "linear", "sine"});
  s.read("schedule_steps", m.schedule_steps);
  s.read("lr_multiplier", m.lr_multiplier);
  s.read("warmup_steps", m.warmup_steps);
  s.read_choice("backbone_loss", m.backbone_loss, {"lm", "self_distill"});
  if (task != "medusa") {
    const std::pair<const char*, bool> changed[] = {
        {"num_heads", m.num_heads != defaults.num_heads},
        {"num_layers", m.num_layers != defaults.num_layers},
        {"stage", m.stage != defaults.stage},
        {"copy_lm_head", m.copy_lm_head != defaults.copy_lm_head},
        {"heads_coefficient", m.heads_coefficient != defaults.heads_coefficient},
        {"decay", m.decay != defaults.decay},
        {"schedule", m.schedule != defaults.schedule},
        {"schedule_steps", m.schedule_steps != defaults.schedule_steps},
        {"lr_multiplier", m.lr_multiplier != defaults.lr_multiplier},
        {"warmup_steps", m.warmup_steps != defaults.warmup_steps},
        {"backbone_loss", m.backbone_loss != defaults.backbone_loss}};
    for (const auto& [key, set] : changed)
      s.require(!set, key, "is set but task.name is ", task, " — the medusa section configures task.name: medusa "
                "only; set task.name: medusa or remove the medusa section");
    return;
  }
  s.require(m.num_heads >= 1 && m.num_heads <= 16, "num_heads", "must be in [1, 16] (Medusa trains 3 to 5), got ",
            m.num_heads);
  s.require(m.num_layers >= 0 && m.num_layers <= 8, "num_layers", "must be in [0, 8] ResBlocks per head (Medusa: 1), got ",
            m.num_layers);
  s.require(m.stage == 1 || m.stage == 2, "stage", "must be 1 (Medusa-1: the backbone frozen) or 2 (Medusa-2: "
            "trained jointly), got ", m.stage);
  s.require(m.heads_coefficient > 0, "heads_coefficient", "must be positive (Medusa: 0.2), got ", m.heads_coefficient);
  s.require(m.decay > 0, "decay", "must be positive (Medusa: 0.8), got ", m.decay);
  s.require(m.schedule_steps >= 0, "schedule_steps", "must be >= 0 (0 = training.steps), got ", m.schedule_steps);
  s.require(m.lr_multiplier > 0, "lr_multiplier", "must be positive (Medusa-2: 4.0), got ", m.lr_multiplier);
  s.require(m.warmup_steps >= 0, "warmup_steps", "must be >= 0, got ", m.warmup_steps);
  if (m.stage == 1) {
    s.require(m.warmup_steps == defaults.warmup_steps && m.backbone_loss == defaults.backbone_loss &&
                  m.lr_multiplier == defaults.lr_multiplier,
              "warmup_steps", ", lr_multiplier and backbone_loss configure stage 2 (joint training) only, but stage "
              "is 1 (the backbone frozen, only the heads train) — set stage: 2 or remove them");
  }
}

// The lora section; with no modules (LoRA off) every other key must stay at its default.
void parse_lora(const Context& ctx, const Section& s, const std::string& task, LoraSection& l) {
  const LoraSection defaults;
  s.read("modules", l.modules);
  s.read("r", l.r);
  s.read("alpha", l.alpha);
  s.read("dropout", l.dropout);
  s.read("rslora", l.rslora);
  s.read("qa_group", l.qa_group);
  std::string init_from;
  // Resolved but not required to exist: only a fresh start reads it (peft_adapter.cpp says what is
  // missing), so a finished run loads after its starting adapter is gone.
  if (s.read("init_from", init_from) && !init_from.empty()) l.init_from = resolve_input(ctx, s, "init_from", init_from);
  if (!l.enabled()) {
    const std::pair<const char*, bool> changed[] = {{"r", l.r != defaults.r},
                                                    {"alpha", l.alpha != defaults.alpha},
                                                    {"dropout", l.dropout != defaults.dropout},
                                                    {"rslora", l.rslora != defaults.rslora},
                                                    {"qa_group", l.qa_group != defaults.qa_group},
                                                    {"init_from", !l.init_from.empty()}};
    for (const auto& [key, set] : changed)
      s.require(!set, key, "is set but lora.modules is empty, so there is no adapter — list the layers to adapt "
                "(e.g. modules: [q_proj, v_proj], or [all-linear]) or remove the lora section");
    return;
  }
  for (const auto& m : l.modules)
    s.require(!m.empty(), "modules", "contains an empty pattern — remove it (\"all-linear\" adapts every Linear but lm_head)");
  s.require(task == "lm" || task == "sft" || task == "distill", "modules", "attaches LoRA adapters for task.name lm, "
            "sft or distill, but task.name is ", task, " — use task.name: lm, sft or distill, or remove the lora section");
  s.require(l.r >= 1, "r", "must be at least 1 (QLoRA: 64), got ", l.r);
  s.require(l.alpha > 0, "alpha", "must be positive (QLoRA: 16), got ", l.alpha);
  s.require(l.dropout >= 0 && l.dropout < 1, "dropout", "must be in [0, 1) (QLoRA: 0.1 up to 13B), got ", l.dropout);
  s.require(l.qa_group >= 0, "qa_group", "must be >= 0 (0 = plain LoRA; QA-LoRA: 32), got ", l.qa_group);
}

// The quant section; with scheme none every other key must stay at its default.
void parse_quant(const Section& s, QuantSection& q) {
  const QuantSection defaults;
  s.read_choice("scheme", q.scheme, {"none", "nf4", "int4", "int2"});
  s.read("block", q.block);
  s.read("double_quant", q.double_quant);
  s.read("modules", q.modules);
  s.read("skip", q.skip);
  if (!q.enabled()) {
    const std::pair<const char*, bool> changed[] = {{"block", q.block != defaults.block},
                                                    {"double_quant", q.double_quant != defaults.double_quant},
                                                    {"modules", q.modules != defaults.modules},
                                                    {"skip", q.skip != defaults.skip}};
    for (const auto& [key, set] : changed)
      s.require(!set, key, "is set but quant.scheme is none (a dense base) — set scheme: nf4, int4 or int2, or remove it");
    return;
  }
  if (q.block == 0) q.block = q.scheme == "nf4" ? 64 : 128;
  s.require(q.block >= 8 && q.block % 8 == 0, "block", "must be a positive multiple of 8 (nf4: 64; int: 32, 64 or 128), got ",
            q.block);
  // false is what a stored int run config holds (to_yaml writes every key): only true is refused.
  s.require(q.scheme == "nf4" || !s.has("double_quant") || !q.double_quant, "double_quant", "applies to nf4 only (int4/int2 keep f32 "
            "scales and zeros per group) — remove it");
  if (q.scheme != "nf4") q.double_quant = false;
  s.require(!q.modules.empty(), "modules", "is empty, so nothing is quantized — list the layers ([all-linear]) or set "
            "scheme: none");
  for (const auto& m : q.modules)
    s.require(!m.empty(), "modules", "contains an empty pattern — remove it");
}

}  // namespace

RunConfig parse_run_config(const std::string& yaml_text, const std::string& source_name, const std::string& base_dir,
                           const std::vector<std::string>& overrides) {
  Context ctx{source_name, abs_normal(base_dir.empty() ? "." : base_dir), {}};
  const auto sections = config_detail::read_config_tree(ctx, yaml_text, overrides);
  RunConfig c;
  c.source = source_name;
  parse_run(sections.at("run"), source_name, c.run);
  sections.at("task").read_choice("name", c.task.name, task_names());
  parse_distill(ctx, sections.at("distill"), c.task.name, c.distill);
  parse_medusa(sections.at("medusa"), c.task.name, c.medusa);
  parse_lora(ctx, sections.at("lora"), c.task.name, c.lora);
  parse_quant(sections.at("quant"), c.quant);
  parse_model(ctx, sections.at("model"), c.model);
  config_detail::parse_router(sections.at("router"), c, c.router);
  parse_data(ctx, sections.at("data"), c.model, c.data);
  parse_tokenizer(ctx, sections.at("tokenizer"), c.model, c.tokenizer);
  parse_optimizer(sections.at("optimizer"), c.optimizer);
  // SOAP and COSMOS refresh their eigenbases with host LAPACK (kernels/linalg.h): CPU only for now.
  sections.at("optimizer").require(
      c.run.device == "cpu" || (c.optimizer.name != "soap" && c.optimizer.name != "cosmos"), "name", c.optimizer.name,
      " needs run.device: cpu for now — its eigenbasis updates run on host linear algebra; on cuda use adamw or "
      "muon, or set run.device: cpu");
  parse_training(sections.at("training"), c.data, c.training);
  parse_schedule(sections.at("schedule"), c.optimizer, c.training, c.schedule);
  parse_parallel(sections.at("parallel"), c.model, c.parallel);
  sections.at("data").require(c.data.packing != "documents" || c.parallel.sp == 1, "packing",
                              "documents needs parallel.sp = 1, got sp = ", c.parallel.sp,
                              " — Ulysses sequence parallelism does not mask document boundaries yet; use "
                              "packing: none or sp: 1");
  // On-policy rows are decoded with the drafter's KV cache, which needs the whole drafter on the rank.
  sections.at("distill").require(
      c.distill.on_policy == 0 || (c.parallel.tp == 1 && c.parallel.pp == 1 && c.parallel.sp == 1), "on_policy",
      c.distill.on_policy, " samples rows from the whole drafter, but parallel.tp = ", c.parallel.tp,
      ", parallel.pp = ", c.parallel.pp, ", parallel.sp = ", c.parallel.sp,
      " — set parallel.tp, parallel.pp and parallel.sp to 1 (dp works), or distill.on_policy: 0");
  if (c.task.name == "medusa") {
    sections.at("model").require(!c.model.init_from.empty(), "init_from", "is required for task.name: medusa — "
                                 "the heads train on a pretrained base: set model.init_from to an anvil run or "
                                 "checkpoint directory, or a Hugging Face directory (e.g. runs/demo)");
    sections.at("parallel").require(c.parallel.sp == 1, "sp", "must be 1 for task.name: medusa, got ", c.parallel.sp,
                                    " — head k's target is k + 1 positions ahead, across sequence slices; dp, tp "
                                    "and pp work");
    sections.at("medusa").require(c.medusa.warmup_steps < c.training.steps || c.medusa.stage == 1, "warmup_steps",
                                  c.medusa.warmup_steps, " heads-only steps leave none of training.steps = ",
                                  c.training.steps, " for joint training — lower medusa.warmup_steps");
  }
  if (c.task.name == "router") {
    sections.at("model").require(!c.model.init_from.empty(), "init_from", "is required for task.name: router — the "
                                 "routers train on a frozen pretrained backbone: set model.init_from to an anvil run or "
                                 "checkpoint directory, or a Hugging Face directory (e.g. runs/demo)");
    sections.at("parallel").require(c.parallel.sp == 1, "sp", "must be 1 for task.name: router, got ", c.parallel.sp,
                                    " — a sequence router decides on the mean over the whole sequence; dp, tp and pp "
                                    "work");
  }
  if (c.lora.enabled()) {
    sections.at("model").require(!c.model.init_from.empty(), "init_from", "is required with lora.modules — the "
                                 "adapters train on a frozen pretrained base, which a checkpoint does not hold: set "
                                 "model.init_from to an anvil run or checkpoint directory, or a Hugging Face directory");
  }
  // Distill's LoRA student is the standalone drafter (model.init_from's base); EAGLE and ParallelSpec
  // drafters have parts of their own (fusion layer, mask tokens) that a frozen base does not hold.
  sections.at("lora").require(!c.lora.enabled() || c.task.name != "distill" || c.distill.drafter == "standalone",
                              "modules", "adapts the standalone drafter of task.name: distill (LREC), but "
                              "distill.drafter is ", c.distill.drafter, " — set distill.drafter: standalone, or remove "
                              "the lora section to train the ", c.distill.drafter, " drafter whole");
  sections.at("quant").require(!c.quant.enabled() || c.lora.enabled(), "scheme", c.quant.scheme, " quantizes a frozen "
                               "base, but lora.modules is empty, so nothing would train — add a lora section (e.g. "
                               "modules: [all-linear]) or set quant.scheme: none");
  parse_checkpoint(ctx, sections.at("checkpoint"), c.run, c.checkpoint);
  parse_guard(sections.at("guard"), c.guard);
  parse_logging(sections.at("logging"), c.logging);
  return c;
}

RunConfig load_run_config(const std::string& yaml_path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  ANVIL_CHECK(fs::exists(yaml_path, ec), "config file not found: ", yaml_path, " (looked in ", abs_normal(yaml_path),
              ") — check the path");
  ANVIL_CHECK(!fs::is_directory(yaml_path, ec), "config path ", yaml_path,
              " is a directory — pass the YAML file inside it");
  std::ifstream in(yaml_path);
  ANVIL_CHECK(in.good(), "cannot read config file ", yaml_path, " — check its permissions");
  std::stringstream text;
  text << in.rdbuf();
  return parse_run_config(text.str(), yaml_path, fs::path(abs_normal(yaml_path)).parent_path().string(), overrides);
}

}  // namespace anvil
