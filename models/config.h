// ModelConfig: the architecture, named with Hugging Face config.json fields so a
// real checkpoint's config maps one-to-one (GPT-2's n_embd/n_head/... are read too).
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace anvil {

enum class ModelFamily { GPT2, Llama };

struct ModelConfig {
  std::string model_type = "llama";      // "gpt2" | "llama"
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;      // = num_attention_heads for MHA
  int64_t head_dim = 0;                  // 0: hidden_size / num_attention_heads
  int64_t intermediate_size = 11008;
  int64_t max_position_embeddings = 2048;
  double norm_eps = 1e-6;                // rms_norm_eps (llama) / layer_norm_epsilon (gpt2)
  double rope_theta = 10000.0;
  double initializer_range = 0.02;
  bool tie_word_embeddings = false;
  bool attention_bias = false;           // bias on q/k/v/o projections
  bool mlp_bias = false;                 // bias on MLP projections
  std::string hidden_act = "silu";       // "silu" (SwiGLU MLP) | "gelu_new" (GELU-tanh MLP)

  ModelFamily family() const;
  int64_t resolved_head_dim() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  // Llama's MLP is gated (SwiGLU); GPT-2's is a plain GELU MLP.
  bool gated_mlp() const { return family() == ModelFamily::Llama; }

  // Throws an anvil::Error naming the offending fields and numbers.
  void validate() const;

  // Presets with Hugging Face defaults for each family (sizes still to be set).
  static ModelConfig gpt2();
  static ModelConfig llama();

  // Reads a Hugging Face config.json object; `source` names it in error messages.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig from_file(const std::string& path);
  nlohmann::json to_json() const;
};

}  // namespace anvil
