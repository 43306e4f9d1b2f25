#include "models/config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <type_traits>

#include "core/error.h"

namespace anvil {

namespace {
const char* kModelTypes = "'gpt2', 'llama', 'qwen2' and 'mistral'";
}  // namespace

// --- RopeScaling ---

std::vector<float> RopeScaling::apply(const std::vector<float>& inv_freq) const {
  validate();
  std::vector<float> out = inv_freq;
  if (type == "linear") {
    for (float& f : out) f = static_cast<float>(f / factor);
  } else if (type == "llama3") {
    // Llama 3.1 (Meta's published formula): wavelengths shorter than the original context /
    // high_freq_factor keep their frequency, longer than original / low_freq_factor are divided by
    // factor, and those between blend the two linearly in original / wavelength.
    const double pi = 3.14159265358979323846;
    const double old_context = static_cast<double>(original_max_position_embeddings);
    const double low_freq_wavelen = old_context / low_freq_factor, high_freq_wavelen = old_context / high_freq_factor;
    for (float& f : out) {
      const double freq = f, wavelen = 2 * pi / freq;
      double scaled = freq;
      if (wavelen > low_freq_wavelen) {
        scaled = freq / factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
        scaled = (1 - smooth) * freq / factor + smooth * freq;
      }
      f = static_cast<float>(scaled);
    }
  }
  return out;
}

void RopeScaling::validate() const {
  ANVIL_CHECK(type == "none" || type == "linear" || type == "llama3", "model config: rope_scaling type '", type,
              "' is not supported — anvil implements 'linear' and 'llama3' (or none)");
  if (none()) return;
  ANVIL_CHECK(std::isfinite(factor) && factor > 0, "model config: rope_scaling factor = ", factor, " must be positive");
  if (type != "llama3") return;
  ANVIL_CHECK(std::isfinite(low_freq_factor) && low_freq_factor > 0, "model config: rope_scaling low_freq_factor = ",
              low_freq_factor, " must be positive");
  ANVIL_CHECK(std::isfinite(high_freq_factor) && high_freq_factor > low_freq_factor,
              "model config: rope_scaling high_freq_factor = ", high_freq_factor,
              " must exceed low_freq_factor = ", low_freq_factor);
  ANVIL_CHECK(original_max_position_embeddings > 0, "model config: rope_scaling original_max_position_embeddings = ",
              original_max_position_embeddings, " must be positive");
}

nlohmann::json RopeScaling::to_json() const {
  if (none()) return nullptr;
  // "type" for linear is what transformers before 4.43 require; later versions read it too.
  if (type == "linear") return {{"type", "linear"}, {"factor", factor}};
  return {{"rope_type", type},
          {"factor", factor},
          {"low_freq_factor", low_freq_factor},
          {"high_freq_factor", high_freq_factor},
          {"original_max_position_embeddings", original_max_position_embeddings}};
}

RopeScaling RopeScaling::from_json(const nlohmann::json& j, const std::string& source) {
  RopeScaling r;
  if (j.is_null()) return r;
  auto unsupported = [&](const std::string& why) {
    ANVIL_FAIL(source, ": unsupported field value rope_scaling = ", j.dump(), " — ", why);
  };
  if (!j.is_object()) unsupported("expected null or an object with \"rope_type\" (or \"type\") and \"factor\"");
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_string()) unsupported(std::string("'") + key + "' must be a string");
    if (!type.empty() && it->get<std::string>() != type) unsupported("'rope_type' and 'type' disagree");
    type = it->get<std::string>();
  }
  if (type.empty()) unsupported("it names no type: add \"rope_type\": \"linear\" or \"llama3\"");
  if (type == "default") return r;
  if (type != "linear" && type != "llama3")
    unsupported("anvil implements rope_scaling types 'default', 'linear' and 'llama3'; '" + type +
                "' is not implemented");
  r.type = type;
  std::set<std::string> allowed = {"rope_type", "type", "factor"};
  if (type == "llama3")
    allowed.insert({"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"});
  for (const auto& [key, value] : j.items())
    if (!allowed.count(key)) unsupported("'" + key + "' is not a field of " + type + " scaling in anvil");
  auto number = [&](const char* key, auto& out) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) unsupported(std::string(type) + " scaling needs '" + key + "'");
    using T = std::decay_t<decltype(out)>;
    if (std::is_integral<T>::value ? !it->is_number_integer() : !it->is_number())
      unsupported(std::string("'") + key + "' must be a" + (std::is_integral<T>::value ? "n integer" : " number"));
    out = it->get<T>();
  };
  number("factor", r.factor);
  if (type == "llama3") {
    number("low_freq_factor", r.low_freq_factor);
    number("high_freq_factor", r.high_freq_factor);
    number("original_max_position_embeddings", r.original_max_position_embeddings);
  }
  try {
    r.validate();
  } catch (const Error& e) {
    unsupported(e.what());
  }
  return r;
}

bool RopeScaling::operator==(const RopeScaling& o) const {
  if (type != o.type) return false;
  if (none()) return true;
  if (type == "linear") return factor == o.factor;
  return factor == o.factor && low_freq_factor == o.low_freq_factor && high_freq_factor == o.high_freq_factor &&
         original_max_position_embeddings == o.original_max_position_embeddings;
}

// --- ModelConfig ---

ModelFamily ModelConfig::family() const {
  if (model_type == "gpt2") return ModelFamily::GPT2;
  if (model_type == "llama" || model_type == "qwen2" || model_type == "mistral") return ModelFamily::Llama;
  ANVIL_FAIL("unsupported model_type '", model_type, "' — anvil supports ", kModelTypes);
}

ModelConfig ModelConfig::gpt2() {
  ModelConfig c;
  c.model_type = "gpt2";
  c.vocab_size = 50257;
  c.hidden_size = 768;
  c.num_hidden_layers = 12;
  c.num_attention_heads = c.num_key_value_heads = 12;
  c.intermediate_size = 4 * 768;
  c.max_position_embeddings = 1024;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  c.attention_bias = c.mlp_bias = true;
  c.hidden_act = "gelu_new";
  return c;
}

ModelConfig ModelConfig::llama() { return ModelConfig(); }

ModelConfig ModelConfig::qwen2() {
  ModelConfig c;
  c.model_type = "qwen2";
  c.vocab_size = 151936;
  c.intermediate_size = 22016;
  c.max_position_embeddings = 32768;
  return c;
}

ModelConfig ModelConfig::mistral() {
  ModelConfig c;
  c.model_type = "mistral";
  c.num_key_value_heads = 8;
  c.intermediate_size = 14336;
  c.max_position_embeddings = 4096 * 32;
  c.sliding_window = 4096;
  return c;
}

ModelConfig ModelConfig::preset(const std::string& model_type) {
  if (model_type == "gpt2") return gpt2();
  if (model_type == "llama") return llama();
  if (model_type == "qwen2") return qwen2();
  if (model_type == "mistral") return mistral();
  ANVIL_FAIL("unsupported model_type '", model_type, "' — anvil supports ", kModelTypes);
}

void ModelConfig::validate() const {
  (void)family();
  auto positive = [](int64_t v, const char* field) {
    ANVIL_CHECK(v > 0, "model config: ", field, " = ", v, " must be positive");
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(intermediate_size, "intermediate_size");
  positive(max_position_embeddings, "max_position_embeddings");
  ANVIL_CHECK(head_dim > 0 || hidden_size % num_attention_heads == 0,
              "model config: num_attention_heads = ", num_attention_heads, " does not divide hidden_size = ",
              hidden_size, " — choose a head count that divides the hidden size (or set head_dim)");
  ANVIL_CHECK(num_attention_heads % num_key_value_heads == 0, "model config: num_key_value_heads = ",
              num_key_value_heads, " does not divide num_attention_heads = ", num_attention_heads,
              " — grouped-query attention needs a whole number of query heads per KV head");
  ANVIL_CHECK(family() != ModelFamily::Llama || resolved_head_dim() % 2 == 0, "model config: head_dim = ",
              resolved_head_dim(), " must be even for rotary embeddings");
  if (gated_mlp())
    ANVIL_CHECK(hidden_act == "silu", "model config: hidden_act '", hidden_act,
                "' is not supported for llama — its gated MLP is SwiGLU ('silu')");
  else
    ANVIL_CHECK(hidden_act == "gelu_new" || hidden_act == "gelu_pytorch_tanh", "model config: activation '",
                hidden_act, "' is not supported for gpt2 — use 'gelu_new' (GELU, tanh approximation)");
  ANVIL_CHECK(norm_eps > 0, "model config: norm epsilon ", norm_eps, " must be positive");
  ANVIL_CHECK(rope_theta > 0, "model config: rope_theta ", rope_theta, " must be positive");
  ANVIL_CHECK(family() == ModelFamily::Llama || rope_scaling.none(), "model config: rope_scaling '",
              rope_scaling.type, "' applies to rotary embeddings; gpt2 has learned positions — remove it");
  rope_scaling.validate();
  ANVIL_CHECK(sliding_window >= 0, "model config: sliding_window = ", sliding_window,
              " must be >= 0 (0 = attend to the whole context)");
  ANVIL_CHECK(sliding_window == 0 || model_type == "mistral", "model config: sliding_window = ", sliding_window,
              " is set but model_type '", model_type, "' attends to the whole context in transformers — use "
              "model_type 'mistral' for sliding-window attention, or set sliding_window 0");
  if (model_type == "qwen2" || model_type == "mistral") {
    ANVIL_CHECK(!attention_bias, "model config: attention_bias = true does not apply to ", model_type, " — ",
                model_type == "qwen2" ? "qwen2 always has q/k/v biases and no o_proj bias" : "mistral has no attention biases",
                "; set it false");
    ANVIL_CHECK(!mlp_bias, "model config: mlp_bias = true does not apply to ", model_type,
                " — its MLP has no biases; set it false");
  }
}

namespace {
template <class T>
void read(const nlohmann::json& j, const char* key, T& out, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  try {
    out = it->get<T>();
  } catch (const nlohmann::json::exception&) {
    ANVIL_FAIL(source, ": field '", key, "' has the wrong type (", it->type_name(), ")");
  }
}
}  // namespace

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& source) {
  ANVIL_CHECK(j.is_object(), source, ": expected a JSON object");
  std::string type;
  read(j, "model_type", type, source);
  ANVIL_CHECK(!type.empty(), source, ": missing 'model_type' — expected one of ", kModelTypes);
  ModelConfig c;
  if (type == "gpt2") {
    c = gpt2();
    read(j, "vocab_size", c.vocab_size, source);
    read(j, "n_embd", c.hidden_size, source);
    read(j, "n_layer", c.num_hidden_layers, source);
    read(j, "n_head", c.num_attention_heads, source);
    c.num_key_value_heads = c.num_attention_heads;
    c.intermediate_size = 4 * c.hidden_size;
    read(j, "n_inner", c.intermediate_size, source);
    read(j, "n_positions", c.max_position_embeddings, source);
    read(j, "layer_norm_epsilon", c.norm_eps, source);
    read(j, "activation_function", c.hidden_act, source);
    read(j, "initializer_range", c.initializer_range, source);
    read(j, "tie_word_embeddings", c.tie_word_embeddings, source);
  } else if (type == "llama" || type == "qwen2" || type == "mistral") {
    c = preset(type);
    read(j, "vocab_size", c.vocab_size, source);
    read(j, "hidden_size", c.hidden_size, source);
    read(j, "num_hidden_layers", c.num_hidden_layers, source);
    read(j, "num_attention_heads", c.num_attention_heads, source);
    c.num_key_value_heads = c.num_attention_heads;
    read(j, "num_key_value_heads", c.num_key_value_heads, source);
    read(j, "head_dim", c.head_dim, source);
    read(j, "intermediate_size", c.intermediate_size, source);
    read(j, "max_position_embeddings", c.max_position_embeddings, source);
    read(j, "rms_norm_eps", c.norm_eps, source);
    read(j, "rope_theta", c.rope_theta, source);
    read(j, "initializer_range", c.initializer_range, source);
    read(j, "tie_word_embeddings", c.tie_word_embeddings, source);
    read(j, "hidden_act", c.hidden_act, source);
    if (j.contains("rope_scaling")) c.rope_scaling = RopeScaling::from_json(j["rope_scaling"], source);
    const auto window = j.find("sliding_window");
    const bool has_window = window != j.end() && !window->is_null();
    if (type == "llama") {
      read(j, "attention_bias", c.attention_bias, source);
      read(j, "mlp_bias", c.mlp_bias, source);
      ANVIL_CHECK(!has_window, source, ": unsupported field value sliding_window = ", has_window ? window->dump() : "",
                  " — llama attends to the whole context; sliding-window attention is model_type 'mistral'");
    } else if (type == "mistral") {
      c.sliding_window = 0;  // null: the whole context
      if (has_window) {
        ANVIL_CHECK(window->is_number_integer() && window->get<int64_t>() > 0, source,
                    ": unsupported field value sliding_window = ", window->dump(),
                    " — expected a positive number of positions or null (no window)");
        c.sliding_window = window->get<int64_t>();
      }
    } else {  // qwen2: sliding_window only counts with use_sliding_window, per layer (max_window_layers)
      bool use_window = false;
      read(j, "use_sliding_window", use_window, source);
      ANVIL_CHECK(!use_window, source, ": unsupported field value use_sliding_window = true — Qwen2's per-layer "
                  "sliding window (max_window_layers) is not implemented; anvil loads Qwen2 with full attention "
                  "(use_sliding_window false)");
    }
  } else {
    ANVIL_FAIL(source, ": unsupported model_type '", type, "' — anvil supports ", kModelTypes);
  }
  c.model_type = type;
  try {
    c.validate();
  } catch (const Error& e) {
    ANVIL_FAIL(source, ": ", e.what());
  }
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  ANVIL_CHECK(in.good(), "cannot open model config ", path, " — check the path");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    ANVIL_FAIL(path, ": not valid JSON (", e.what(), ")");
  }
  return from_json(j, path);
}

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json j;
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["initializer_range"] = initializer_range;
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (family() == ModelFamily::GPT2) {
    j["n_embd"] = hidden_size;
    j["n_layer"] = num_hidden_layers;
    j["n_head"] = num_attention_heads;
    j["n_inner"] = intermediate_size;
    j["n_positions"] = max_position_embeddings;
    j["layer_norm_epsilon"] = norm_eps;
    j["activation_function"] = hidden_act;
  } else {
    j["hidden_size"] = hidden_size;
    j["num_hidden_layers"] = num_hidden_layers;
    j["num_attention_heads"] = num_attention_heads;
    j["num_key_value_heads"] = num_key_value_heads;
    j["head_dim"] = resolved_head_dim();
    j["intermediate_size"] = intermediate_size;
    j["max_position_embeddings"] = max_position_embeddings;
    j["rms_norm_eps"] = norm_eps;
    j["rope_theta"] = rope_theta;
    j["rope_scaling"] = rope_scaling.to_json();
    j["hidden_act"] = hidden_act;
    if (model_type == "llama") {
      j["attention_bias"] = attention_bias;
      j["mlp_bias"] = mlp_bias;
    } else if (model_type == "mistral") {
      j["sliding_window"] = sliding_window > 0 ? nlohmann::json(sliding_window) : nlohmann::json(nullptr);
    } else {  // qwen2: full attention (transformers 4.38 would apply a non-null sliding_window regardless)
      j["use_sliding_window"] = false;
      j["sliding_window"] = nullptr;
      j["max_window_layers"] = num_hidden_layers;
    }
  }
  return j;
}

}  // namespace anvil
