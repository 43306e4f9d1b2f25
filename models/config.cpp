#include "models/config.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace anvil {

ModelFamily ModelConfig::family() const {
  if (model_type == "gpt2") return ModelFamily::GPT2;
  if (model_type == "llama") return ModelFamily::Llama;
  ANVIL_FAIL("unsupported model_type '", model_type, "' — anvil supports 'gpt2' and 'llama'");
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
  ANVIL_CHECK(!type.empty(), source, ": missing 'model_type' — expected 'gpt2' or 'llama'");
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
  } else if (type == "llama") {
    c = llama();
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
    read(j, "attention_bias", c.attention_bias, source);
    read(j, "mlp_bias", c.mlp_bias, source);
    read(j, "hidden_act", c.hidden_act, source);
  } else {
    ANVIL_FAIL(source, ": unsupported model_type '", type, "' — anvil supports 'gpt2' and 'llama'");
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
    j["attention_bias"] = attention_bias;
    j["mlp_bias"] = mlp_bias;
    j["hidden_act"] = hidden_act;
  }
  return j;
}

}  // namespace anvil
