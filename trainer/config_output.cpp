// The resolved run config as YAML, config differences and vocab resolution.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "trainer/config.h"
#include "trainer/config_schema.h"
#include "trainer/did_you_mean.h"

namespace anvil {

std::string format_config_double(double v) {
  if (!std::isfinite(v)) return v != v ? ".nan" : v > 0 ? ".inf" : "-.inf";
  char buf[48];
  int precision = 1;
  for (; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  // Whole numbers up to 1e15 without an exponent (10000.0, not 1e+04).
  const double magnitude = std::fabs(v);
  if (magnitude >= 1 && magnitude < 1e15) {
    precision = std::max(precision, static_cast<int>(std::floor(std::log10(magnitude))) + 1);
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
  }
  // YAML 1.1 readers (PyYAML) want a '.' in the mantissa and a signed exponent: 1.0e-08, not 1e-08.
  std::string s = buf;
  const size_t e = s.find_first_of("eE");
  std::string mantissa = s.substr(0, e), exponent = e == std::string::npos ? "" : s.substr(e);
  if (mantissa.find('.') == std::string::npos) mantissa += ".0";
  return mantissa + exponent;
}

std::vector<ConfigField> config_fields(const RunConfig& c) {
  using K = ConfigField::Kind;
  std::vector<ConfigField> f;
  std::string section;
  auto plain = [&](const char* key, std::string text, std::string comment = "") {
    f.push_back({section, key, K::Plain, std::move(text), {}, std::move(comment)});
  };
  auto integer = [&](const char* key, int64_t v, std::string comment = "") {
    plain(key, std::to_string(v), std::move(comment));
  };
  auto real = [&](const char* key, double v, std::string comment = "") {
    plain(key, format_config_double(v), std::move(comment));
  };
  auto boolean = [&](const char* key, bool v) { plain(key, v ? "true" : "false"); };
  auto string = [&](const char* key, std::string v, std::string comment = "") {
    f.push_back({section, key, K::String, std::move(v), {}, std::move(comment)});
  };

  section = "run";
  string("name", c.run.name);
  string("out_dir", c.run.out_dir);
  integer("seed", c.run.seed);
  string("device", c.run.device, "cpu | cuda");
  string("precision", c.run.precision, "fp32 | bf16 (cuda only; f32 master weights)");
  integer("threads", c.run.threads, "0 = all cores");
  real("peer_timeout", c.run.peer_timeout, "seconds; 0 = no peer watchdog");

  section = "task";
  string("name", c.task.name, "lm | sft | distill | medusa | router");

  section = "distill";  // written for every task (at its defaults unless the task is distill)
  string("target", c.distill.target, "frozen target: anvil checkpoint or Hugging Face directory");
  string("drafter", c.distill.drafter, "standalone | parallelspec | eagle");
  string("loss", c.distill.loss, "forward_kl | reverse_kl | tvd | jsd | ce");
  real("temperature", c.distill.temperature);
  integer("top_k", c.distill.top_k, "0 = off");
  real("top_p", c.distill.top_p, "1 = off");
  integer("gamma", c.distill.gamma, "draft length of tau_sim");
  integer("parallel_tokens", c.distill.parallel_tokens, "parallelspec: mask tokens k");
  integer("anchors_per_sequence", c.distill.anchors_per_sequence, "parallelspec: 0 = as many as fit");
  std::vector<std::string> eagle_layers;
  for (int64_t layer : c.distill.eagle_layers) eagle_layers.push_back(std::to_string(layer));
  f.push_back({section, "eagle_layers", K::List, "", eagle_layers, "eagle: three target layers; [] = {1, L/2, L-2}"});
  integer("ttt_steps", c.distill.ttt_steps, "eagle: training-time-test steps");
  real("on_policy", c.distill.on_policy, "share of micro-batches sampled from the drafter");
  real("ce_weight", c.distill.ce_weight, "loss = divergence + ce_weight x CE on the data");

  section = "medusa";  // written for every task (at its defaults unless the task is medusa)
  integer("num_heads", c.medusa.num_heads);
  integer("num_layers", c.medusa.num_layers, "ResBlocks per head");
  integer("stage", c.medusa.stage, "1: backbone frozen | 2: joint");
  boolean("copy_lm_head", c.medusa.copy_lm_head);
  real("heads_coefficient", c.medusa.heads_coefficient, "head k weighs heads_coefficient * decay^k");
  real("decay", c.medusa.decay);
  string("schedule", c.medusa.schedule, "constant | linear | sine");
  integer("schedule_steps", c.medusa.schedule_steps, "0 = training.steps");
  real("lr_multiplier", c.medusa.lr_multiplier, "stage 2: the heads' lr over the backbone's");
  integer("warmup_steps", c.medusa.warmup_steps, "stage 2: heads-only steps first");
  string("backbone_loss", c.medusa.backbone_loss, "stage 2: lm | self_distill");

  section = "router";  // written for every task (at its defaults unless the task is router)
  string("kind", c.router.kind, "mindskip | drllm");
  std::vector<std::string> router_layers;
  for (int64_t layer : c.router.layers) router_layers.push_back(std::to_string(layer));
  f.push_back({section, "layers", K::List, "", router_layers, "[] = the last n but the final one"});
  integer("n", c.router.n);
  string("scope", c.router.scope, "mindskip: attention | mlp | block");
  string("unit", c.router.unit, "mindskip: sequence | token");
  real("tau", c.router.tau, "mindskip: gate runs iff sigmoid(w . xbar) >= tau");
  string("objective", c.router.objective, "mindskip: lm | kl (to the unrouted backbone)");
  real("capacity_target", c.router.capacity_target, "mindskip: share of router units meant to run");
  real("capacity_weight", c.router.capacity_weight, "mindskip: lambda of lambda * relu(capacity - target)");
  boolean("train_skipped", c.router.train_skipped);
  integer("hidden", c.router.hidden, "drllm: router MLP width");
  integer("windows", c.router.windows, "drllm: windows of the windowed mean");
  integer("search_budget", c.router.search_budget, "drllm: forward evaluations per sequence in the label search");
  real("focal_gamma", c.router.focal_gamma, "drllm: focal loss gamma");

  section = "lora";  // written for every run (modules [] = no LoRA)
  f.push_back({section, "modules", K::List, "", c.lora.modules, "HF module globs; [] = off; all-linear"});
  integer("r", c.lora.r);
  real("alpha", c.lora.alpha, "scaling alpha / r (rslora: alpha / sqrt(r))");
  real("dropout", c.lora.dropout, "on the adapter input, training only");
  boolean("rslora", c.lora.rslora);
  integer("qa_group", c.lora.qa_group, "0 = LoRA | g: QA-LoRA pooling group");
  string("init_from", c.lora.init_from, "PEFT adapter dir starting the adapters; empty = fresh");

  section = "quant";  // written for every run (scheme none = a dense base)
  string("scheme", c.quant.scheme, "none | nf4 | int4 | int2");
  integer("block", c.quant.block, "nf4: absmax block | int: group along in");
  boolean("double_quant", c.quant.double_quant);
  f.push_back({section, "modules", K::List, "", c.quant.modules, "HF module globs"});
  f.push_back({section, "skip", K::List, "", c.quant.skip, "kept dense"});

  section = "model";
  const ModelSection& m = c.model;
  // model.config is provenance: the architecture is written out in full, so the resolved YAML stands alone.
  string("init_from", m.init_from, "Hugging Face directory whose weights start the run");
  string("type", m.model_type, "gpt2 | llama | qwen2 | mistral");
  if (m.vocab_size_auto)
    plain("vocab_size", "auto", "the tokenizer's");
  else
    integer("vocab_size", m.vocab_size);
  integer("hidden_size", m.hidden_size);
  integer("num_hidden_layers", m.num_hidden_layers);
  integer("num_attention_heads", m.num_attention_heads);
  integer("num_key_value_heads", m.num_key_value_heads);
  integer("head_dim", m.head_dim);
  integer("intermediate_size", m.intermediate_size);
  integer("max_position_embeddings", m.max_position_embeddings);
  real("rope_theta", m.rope_theta);
  real("norm_eps", m.norm_eps);
  real("initializer_range", m.initializer_range);
  boolean("tie_word_embeddings", m.tie_word_embeddings);
  boolean("attention_bias", m.attention_bias);
  boolean("mlp_bias", m.mlp_bias);
  string("hidden_act", m.hidden_act);
  plain("rope_scaling", m.rope_scaling.none() ? "none" : m.rope_scaling.to_json().dump(), "none | linear | llama3");
  integer("sliding_window", m.sliding_window, "mistral; 0 = whole context");

  section = "data";
  string("train", c.data.train);
  integer("seq_len", c.data.seq_len);
  real("valid_fraction", c.data.valid_fraction);
  boolean("shuffle", c.data.shuffle);
  string("packing", c.data.packing, "none | documents");

  section = "tokenizer";
  string("path", c.tokenizer.path);

  section = "optimizer";
  string("name", c.optimizer.name);
  real("lr", c.optimizer.lr, "peak learning rate");
  real("beta1", c.optimizer.adamw.beta1);
  real("beta2", c.optimizer.adamw.beta2);
  real("eps", c.optimizer.adamw.eps);
  real("weight_decay", c.optimizer.adamw.weight_decay);
  boolean("decay_embeddings", c.optimizer.adamw.decay_embeddings);
  boolean("decay_norms_and_biases", c.optimizer.adamw.decay_vectors);
  real("grad_clip", c.optimizer.grad_clip, "0 = off");
  integer("zero", c.optimizer.zero, "0 | 1 (sharded optimizer state) | 2 (and gradients)");
  const OptimizerSection& o = c.optimizer;
  real("adamw_lr_ratio", o.adamw_lr_ratio, "muon/soap/cosmos: the AdamW group's lr / lr");
  f.push_back({section, "force_adamw", K::List, "", o.force_adamw, "globs sent to AdamW"});
  f.push_back({section, "force_matrix", K::List, "", o.force_matrix, "globs sent to the matrix optimizer"});
  real("muon_momentum", o.muon.momentum);
  boolean("muon_nesterov", o.muon.nesterov);
  integer("muon_ns_steps", o.muon.ns.steps);
  string("muon_scale", o.muon.scale == MuonScale::Keller ? "keller" : "moonlight", "keller | moonlight");
  real("muon_weight_decay", o.muon.weight_decay);
  real("soap_beta1", o.soap.beta1);
  real("soap_beta2", o.soap.beta2);
  real("soap_weight_decay", o.soap.weight_decay);
  integer("soap_precondition_frequency", o.soap.precondition_frequency);
  real("cosmos_beta1", o.cosmos.beta1);
  real("cosmos_beta2", o.cosmos.beta2);
  real("cosmos_lr_ratio", o.cosmos.lr_ratio);
  integer("cosmos_rank", o.cosmos.rank);
  real("cosmos_gamma", o.cosmos.gamma);
  real("cosmos_weight_decay", o.cosmos.weight_decay);
  boolean("cosmos_nesterov", o.cosmos.nesterov);

  section = "schedule";
  string("kind", c.schedule.kind, "constant | cosine | linear | wsd");
  integer("warmup_steps", c.schedule.warmup_steps);
  real("min_lr_ratio", c.schedule.min_lr_ratio);
  real("decay_fraction", c.schedule.decay_fraction, "wsd only");

  section = "training";
  const TrainingSection& t = c.training;
  integer("steps", t.steps);
  integer("micro_batch_size", t.micro_batch_size);
  integer("grad_accum_steps", t.grad_accum_steps);
  f.push_back({section, "trainable", K::List, "", t.trainable, "globs over parameter names"});
  integer("eval_every", t.eval_every, "0 = never");
  integer("eval_batches", t.eval_batches);
  integer("sample_every", t.sample_every, "0 = never");
  string("sample_prompt", t.sample_prompt);
  integer("sample_tokens", t.sample_tokens);
  real("sample_temperature", t.sample_temperature, "0 = greedy");
  integer("sample_top_k", t.sample_top_k, "0 = off");
  real("sample_top_p", t.sample_top_p);
  integer("ignore_index", t.ignore_index);

  section = "parallel";
  integer("dp", c.parallel.dp);
  integer("tp", c.parallel.tp);
  integer("pp", c.parallel.pp);
  integer("sp", c.parallel.sp);
  integer("ep", c.parallel.ep, "expert parallel, carved out of dp");
  real("bucket_mb", c.parallel.bucket_mb, "gradient bucket size");
  string("pp_schedule", c.parallel.pp_schedule, "1f1b | gpipe");

  section = "checkpoint";
  string("dir", c.checkpoint.dir);
  integer("every", c.checkpoint.every, "0 = only at the end");
  integer("keep", c.checkpoint.keep, "0 = keep all");
  string("resume", c.checkpoint.resume, "auto | none | a checkpoint path");
  boolean("on_preempt", c.checkpoint.on_preempt);

  section = "guard";
  string("on_nonfinite", c.guard.on_nonfinite, "skip | stop");
  real("spike_zscore", c.guard.spike_zscore, "0 = off");
  integer("spike_window", c.guard.spike_window);
  string("on_spike", c.guard.on_spike, "skip | stop");
  integer("max_consecutive_skips", c.guard.max_consecutive_skips, "0 = no limit");

  section = "logging";
  integer("every", c.logging.every);
  boolean("jsonl", c.logging.jsonl);
  boolean("tensorboard", c.logging.tensorboard);
  string("progress", c.logging.progress, "auto | always | never");
  real("peak_tflops", c.logging.peak_tflops, "0 = the device table");
  return f;
}

namespace {
// A string YAML would read as something else (null, bool, number) or that is empty gets quotes.
bool needs_quotes(const std::string& s) {
  if (s.empty() || YAML::IsNullString(s)) return true;
  static const char* const kWords[] = {"true", "false", "yes", "no", "on", "off", "y", "n"};
  std::string lower = s;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return std::tolower(ch); });
  for (const char* w : kWords)
    if (lower == w) return true;
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  return *end == '\0';
}
}  // namespace

std::string to_yaml(const RunConfig& config) {
  YAML::Emitter out;
  out << YAML::Comment("anvil run config, fully resolved: every default filled in, paths absolute" +
                       (config.source.empty() ? std::string() : " (from " + config.source + ")"));
  out << YAML::BeginMap;
  const auto fields = config_fields(config);
  for (size_t i = 0; i < fields.size();) {
    const std::string section = fields[i].section;
    out << YAML::Key << section << YAML::Value;
    if (section == "model" && !config.model.config_file.empty())
      out << YAML::Comment("read from " + config.model.config_file + "; every field written out below");
    out << YAML::BeginMap;
    for (; i < fields.size() && fields[i].section == section; ++i) {
      const ConfigField& field = fields[i];
      out << YAML::Key << field.key << YAML::Value;
      if (field.kind == ConfigField::Kind::List) {
        out << YAML::Flow << YAML::BeginSeq;
        for (const auto& item : field.list) out << YAML::DoubleQuoted << item;
        out << YAML::EndSeq;
      } else if (field.kind == ConfigField::Kind::Plain && field.text.rfind('{', 0) == 0) {
        out << YAML::Flow << YAML::Load(field.text);  // a map (model.rope_scaling), written inline
      } else if (field.kind == ConfigField::Kind::String && needs_quotes(field.text)) {
        out << YAML::DoubleQuoted << field.text;
      } else {
        out << field.text;
      }
      if (!field.comment.empty()) out << YAML::Comment(field.comment);
    }
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  ANVIL_CHECK(out.good(), "to_yaml: the YAML emitter failed (", out.GetLastError(), ") — please report this");
  return std::string(out.c_str()) + "\n";
}

std::vector<std::string> config_differences(const RunConfig& a, const RunConfig& b) {
  auto shown = [](const ConfigField& f) {
    if (f.kind != ConfigField::Kind::List) return f.text;
    std::string s = "[";
    for (size_t i = 0; i < f.list.size(); ++i) s += (i ? ", \"" : "\"") + f.list[i] + "\"";
    return s + "]";
  };
  const auto fa = config_fields(a), fb = config_fields(b);
  std::vector<std::string> diffs;
  auto find = [](const std::vector<ConfigField>& fields, const ConfigField& f) -> const ConfigField* {
    for (const auto& g : fields)
      if (g.section == f.section && g.key == f.key) return &g;
    return nullptr;
  };
  for (const auto& f : fa) {
    const ConfigField* g = find(fb, f);
    const std::string before = shown(f), after = g ? shown(*g) : "(unset)";
    if (before != after) diffs.push_back(f.section + "." + f.key + ": " + before + " -> " + after);
  }
  for (const auto& g : fb)
    if (!find(fa, g)) diffs.push_back(g.section + "." + g.key + ": (unset) -> " + shown(g));
  return diffs;
}

void resolve_vocab_size(RunConfig& config, int64_t tokenizer_vocab) {
  ANVIL_CHECK(tokenizer_vocab > 0, "the tokenizer ", config.tokenizer.path, " reports ", tokenizer_vocab,
              " tokens — it is empty or failed to load");
  ModelSection& m = config.model;
  if (m.vocab_size_auto) {
    m.vocab_size = tokenizer_vocab;
    m.vocab_size_auto = false;
    return;
  }
  ANVIL_CHECK(m.vocab_size >= tokenizer_vocab, config.source, ": model.vocab_size = ", m.vocab_size,
              " is smaller than the tokenizer's ", tokenizer_vocab, " tokens (", config.tokenizer.path,
              ") — ids up to ", tokenizer_vocab - 1, " would index past the embedding; set model.vocab_size: auto",
              " or at least ", tokenizer_vocab);
}

}  // namespace anvil
