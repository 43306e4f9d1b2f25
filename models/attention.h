// Multi-head / grouped-query causal self-attention with optional RoPE.
#pragma once
#include <memory>
#include <optional>

#include "models/kv_cache.h"
#include "models/layers.h"

namespace anvil {

// cos/sin tables shared by every attention layer of a model.
struct RopeTables {
  Tensor cos;  // [max_positions, head_dim / 2]
  Tensor sin;
};
std::shared_ptr<const RopeTables> make_rope_tables(int64_t head_dim, int64_t max_positions, double theta);

struct AttentionShape {
  int64_t hidden = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  bool bias = false;
};

class Attention : public Module {
 public:
  enum class Projection {
    Fused,     // GPT-2: one c_attn projection to [q | k | v], output c_proj
    Separate,  // Llama: q_proj, k_proj, v_proj, output o_proj
  };
  // `rope` is null for models with learned positions.
  Attention(const std::string& prefix, const AttentionShape& shape, Projection projection,
            std::shared_ptr<const RopeTables> rope);

  Tensor forward(const Tensor& x, Cache& c) override;   // x: [B, T, hidden]
  Tensor backward(const Tensor& dy, Cache& c) override;
  void collect_params(std::vector<Param*>& out) override;

  // Inference with a KV cache: x [B, T, hidden] holds positions start_pos ..
  // start_pos + T - 1. Their keys and values (after RoPE) are written into kv at
  // those positions, then the queries attend to keys 0 .. start_pos + T - 1.
  // Saves nothing for backward.
  Tensor forward_cached(const Tensor& x, KVLayer& kv, int64_t start_pos);

  const AttentionShape& shape() const { return shape_; }

 private:
  AttentionShape shape_;
  Projection projection_;
  std::shared_ptr<const RopeTables> rope_;
  std::optional<Linear> qkv_;  // Fused
  std::optional<Linear> q_, k_, v_;  // Separate
  Linear out_;
};

}  // namespace anvil
