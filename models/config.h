// ModelConfig: the architecture, named with Hugging Face config.json fields so a
// real checkpoint's config maps one-to-one (GPT-2's n_embd/n_head/... are read too).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace anvil {

// GPT-2, or the Llama family (RMSNorm, RoPE, SwiGLU, GQA) with its thin variants
// qwen2 (q/k/v biases, none on o_proj) and mistral (sliding-window attention).
enum class ModelFamily { GPT2, Llama };

// config.json's rope_scaling: how the rotary inverse frequencies are rescaled for a longer
// context. "none" (null or "default"), "linear" (every frequency / factor, i.e. positions / factor)
// or "llama3" (Llama 3.1: low frequencies / factor, high ones kept, a smooth blend between).
struct RopeScaling {
  std::string type = "none";
  double factor = 1.0;
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3: the context the model was trained at

  bool none() const { return type == "none"; }
  // inv_freq (theta^(-2i/D), from kernels::rope_inv_freq) rescaled as the type says.
  std::vector<float> apply(const std::vector<float>& inv_freq) const;
  void validate() const;  // throws naming the field
  // config.json's object (null for none); from_json accepts "type" or "rope_type" and refuses
  // unknown types and keys, naming `source` and the value.
  nlohmann::json to_json() const;
  static RopeScaling from_json(const nlohmann::json& j, const std::string& source);
  bool operator==(const RopeScaling& o) const;
};

struct ModelConfig {
  std::string model_type = "llama";      // "gpt2" | "llama" | "qwen2" | "mistral"
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
  bool attention_bias = false;           // bias on q/k/v/o projections (gpt2, llama; qwen2: see qkv_bias)
  bool mlp_bias = false;                 // bias on MLP projections
  std::string hidden_act = "silu";       // "silu" (SwiGLU MLP) | "gelu_new" (GELU-tanh MLP)
  RopeScaling rope_scaling;              // Llama family
  int64_t sliding_window = 0;            // mistral: a query sees the last sliding_window positions; 0 = all

  ModelFamily family() const;
  int64_t resolved_head_dim() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  // Llama's MLP is gated (SwiGLU); GPT-2's is a plain GELU MLP.
  bool gated_mlp() const { return family() == ModelFamily::Llama; }
  // Attention biases: Qwen2 has them on q/k/v and never on o_proj; the others follow attention_bias.
  bool qkv_bias() const { return model_type == "qwen2" || attention_bias; }
  bool out_bias() const { return model_type != "qwen2" && attention_bias; }

  // Throws an anvil::Error naming the offending fields and numbers.
  void validate() const;

  // Presets with Hugging Face defaults for each model type (sizes still to be set).
  static ModelConfig gpt2();
  static ModelConfig llama();
  static ModelConfig qwen2();
  static ModelConfig mistral();
  static ModelConfig preset(const std::string& model_type);  // throws for an unknown type

  // Reads a Hugging Face config.json object; `source` names it in error messages.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig from_file(const std::string& path);
  nlohmann::json to_json() const;
};

}  // namespace anvil
