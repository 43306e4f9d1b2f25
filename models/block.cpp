#include "models/block.h"

#include "kernels/elementwise.h"

namespace anvil {

std::unique_ptr<Module> make_norm(const std::string& name, const ModelConfig& config) {
  if (config.family() == ModelFamily::GPT2) return std::make_unique<LayerNorm>(name, config.hidden_size, config.norm_eps);
  return std::make_unique<RMSNorm>(name, config.hidden_size, config.norm_eps);
}

namespace {
bool is_gpt2(const ModelConfig& c) { return c.family() == ModelFamily::GPT2; }

AttentionShape attention_shape(const ModelConfig& c) {
  return {c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.resolved_head_dim(), c.qkv_bias(),
          c.out_bias(), c.sliding_window};
}
}  // namespace

TransformerBlock::TransformerBlock(const std::string& prefix, const ModelConfig& config,
                                   std::shared_ptr<const RopeTables> rope, Communicator* tp,
                                   std::shared_ptr<const SequenceParallelContext> sequence)
    : norm1_(make_norm(prefix + (is_gpt2(config) ? ".ln_1" : ".input_layernorm"), config)),
      norm2_(make_norm(prefix + (is_gpt2(config) ? ".ln_2" : ".post_attention_layernorm"), config)),
      attn_(prefix + (is_gpt2(config) ? ".attn" : ".self_attn"), attention_shape(config),
            is_gpt2(config) ? Attention::Projection::Fused : Attention::Projection::Separate, std::move(rope), tp,
            std::move(sequence)),
      mlp_(prefix + ".mlp", config.hidden_size, config.intermediate_size, config.gated_mlp(), config.mlp_bias, tp) {}

Tensor TransformerBlock::forward(const Tensor& x, Cache& c) {
  Tensor h = attn_.forward(norm1_->forward(x, c.child(0)), c.child(1));
  kernels::add(h, x, h);  // residual, written over the attention output (nobody saved it)
  Tensor y = mlp_.forward(norm2_->forward(h, c.child(2)), c.child(3));
  kernels::add(y, h, y);
  return y;
}

Tensor TransformerBlock::forward_cached(const Tensor& x, KVLayer& kv, int64_t start_pos) {
  Tensor h = attn_.forward_cached(norm1_->infer(x), kv, start_pos);
  kernels::add(h, x, h);
  Tensor y = mlp_.infer(norm2_->infer(h));
  kernels::add(y, h, y);
  return y;
}

Tensor TransformerBlock::backward(const Tensor& dy, Cache& c) {
  Tensor dh = norm2_->backward(mlp_.backward(dy, c.child(3)), c.child(2));
  kernels::add_inplace(dh, dy);  // residual branch
  Tensor dx = norm1_->backward(attn_.backward(dh, c.child(1)), c.child(0));
  kernels::add_inplace(dx, dh);
  return dx;
}

void TransformerBlock::collect_params(std::vector<Param*>& out) {
  norm1_->collect_params(out);
  attn_.collect_params(out);
  norm2_->collect_params(out);
  mlp_.collect_params(out);
}

}  // namespace anvil
