// Family: what distinguishes GPT-2 from the Llama family (Llama, Qwen2, Mistral) as data,
// not as branches in module code: the Hugging Face parameter names, the norm kind, the
// attention projection layout, learned positions or RoPE, the gated MLP, GPT-2's
// residual-scaled init and the tensors its checkpoints store differently. The modules read
// this table; the block spec (models/block_spec.h) reads it to fill the block's slots.
// A new family is a new row here (and its config.json reader in config.cpp).
#pragma once
#include <string>
#include <vector>

#include "models/config.h"

namespace anvil {

enum class NormKind { LayerNorm, RMSNorm };
// How the attention's q, k and v are projected: one fused [q | k | v] matrix (GPT-2's c_attn)
// or three (q_proj, k_proj, v_proj).
enum class QkvLayout { Fused, Separate };
enum class PositionKind { Learned, Rotary };

// The attention's projection names for one QkvLayout.
struct AttentionNames {
  const char* qkv;                   // Fused: "c_attn"
  const char* q, *k, *v;             // Separate: "q_proj", "k_proj", "v_proj"
  const char* out;                   // "c_proj" | "o_proj"
};
const AttentionNames& attention_names(QkvLayout layout);

// The MLP's projection names, plain (GELU) or gated (SwiGLU).
struct MlpNames {
  const char* fc;                    // plain: "c_fc"
  const char* gate, *up;             // gated: "gate_proj", "up_proj"
  const char* down;                  // "c_proj" | "down_proj"
};
const MlpNames& mlp_names(bool gated);

struct Family {
  // Parameter names (Hugging Face's): full names, or the suffix after a layer's prefix.
  const char* model_prefix;          // "transformer." | "model." (base-model files drop it)
  const char* embed_tokens;          // "transformer.wte" | "model.embed_tokens"
  const char* embed_positions;       // "transformer.wpe" | nullptr (no learned positions)
  const char* layer_prefix;          // "transformer.h." + index | "model.layers." + index
  const char* norm1;                 // "ln_1" | "input_layernorm"
  const char* attention;             // "attn" | "self_attn"
  const char* norm2;                 // "ln_2" | "post_attention_layernorm"
  const char* mlp;                   // "mlp"
  const char* final_norm;            // "transformer.ln_f" | "model.norm"
  const char* head;                  // "lm_head"
  // The architecture.
  NormKind norm;
  QkvLayout qkv;
  PositionKind positions;
  bool gated_mlp;                    // SwiGLU (gate, up, down) or GELU (fc, down)
  // Residual projections (Init::ResidualNormal) start at initializer_range / sqrt(2 layers)
  // (GPT-2) or at initializer_range like every matrix (Llama).
  bool scale_residual_init;
  // Checkpoint layout: weights stored transposed ([in, out], GPT-2's Conv1D), and buffers
  // checkpoints carry that anvil recomputes (name suffixes).
  std::vector<std::string> transposed_weights;
  std::vector<std::string> known_buffers;

  std::string layer(int64_t index) const { return layer_prefix + std::to_string(index); }
  bool is_transposed(const std::string& name) const;
  bool is_known_buffer(const std::string& name) const;
};

// The row for config.model_type (throws for an unknown type, naming the supported ones).
const Family& family_of(const ModelConfig& config);

}  // namespace anvil
