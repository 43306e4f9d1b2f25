#include "models/family.h"

namespace anvil {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool ends_with_any(const std::string& s, const std::vector<std::string>& suffixes) {
  for (const std::string& x : suffixes)
    if (ends_with(s, x)) return true;
  return false;
}

const Family kGpt2{"transformer.", "transformer.wte", "transformer.wpe", "transformer.h.", "ln_1", "attn", "ln_2",
                   "mlp", "transformer.ln_f", "lm_head",
                   NormKind::LayerNorm, QkvLayout::Fused, PositionKind::Learned, /*gated_mlp=*/false,
                   /*scale_residual_init=*/true,
                   {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"},
                   {".attn.bias", ".attn.masked_bias"}};

// Llama, Qwen2 and Mistral differ only in config fields (biases, sliding window), not here.
const Family kLlama{"model.", "model.embed_tokens", nullptr, "model.layers.", "input_layernorm", "self_attn",
                    "post_attention_layernorm", "mlp", "model.norm", "lm_head",
                    NormKind::RMSNorm, QkvLayout::Separate, PositionKind::Rotary, /*gated_mlp=*/true,
                    /*scale_residual_init=*/false,
                    {},
                    {".rotary_emb.inv_freq"}};
}  // namespace

const AttentionNames& attention_names(QkvLayout layout) {
  static const AttentionNames fused{"c_attn", nullptr, nullptr, nullptr, "c_proj"};
  static const AttentionNames separate{nullptr, "q_proj", "k_proj", "v_proj", "o_proj"};
  return layout == QkvLayout::Fused ? fused : separate;
}

const MlpNames& mlp_names(bool gated) {
  static const MlpNames plain{"c_fc", nullptr, nullptr, "c_proj"};
  static const MlpNames swiglu{nullptr, "gate_proj", "up_proj", "down_proj"};
  return gated ? swiglu : plain;
}

bool Family::is_transposed(const std::string& name) const { return ends_with_any(name, transposed_weights); }
bool Family::is_known_buffer(const std::string& name) const { return ends_with_any(name, known_buffers); }

const Family& family_of(const ModelConfig& config) {
  return config.family() == ModelFamily::GPT2 ? kGpt2 : kLlama;
}

}  // namespace anvil
