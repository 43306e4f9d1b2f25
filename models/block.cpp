#include "models/block.h"

#include "kernels/elementwise.h"

namespace anvil {

std::unique_ptr<Module> make_norm(const std::string& name, const ModelConfig& config) {
  if (family_of(config).norm == NormKind::LayerNorm)
    return std::make_unique<LayerNorm>(name, config.hidden_size, config.norm_eps);
  return std::make_unique<RMSNorm>(name, config.hidden_size, config.norm_eps);
}

BlockSpec dense_block_spec() {
  BlockSpec spec;
  spec.norm = [](const std::string& name, const BlockContext& b) { return make_norm(name, b.config); };
  spec.attention = [](const BlockContext& b) {
    const ModelConfig& c = b.config;
    const AttentionShape shape{c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.resolved_head_dim(),
                               c.qkv_bias(), c.out_bias(), c.sliding_window};
    return std::make_unique<Attention>(b.prefix + "." + b.family.attention, shape, b.family.qkv, b.rope, b.tp,
                                       b.sequence);
  };
  spec.feed_forward = [](const BlockContext& b) -> std::unique_ptr<FeedForward> {
    return std::make_unique<MLP>(b.prefix + "." + b.family.mlp, b.config.hidden_size, b.config.intermediate_size,
                                 b.family.gated_mlp, b.config.mlp_bias, b.tp);
  };
  return spec;
}

BlockSpec block_spec(const ModelConfig&) { return dense_block_spec(); }

TransformerBlock::TransformerBlock(const BlockSpec& spec, const BlockContext& b)
    : norm1_(spec.norm(b.prefix + "." + b.family.norm1, b)),
      norm2_(spec.norm(b.prefix + "." + b.family.norm2, b)),
      attn_(spec.attention(b)),
      ff_(spec.feed_forward(b)) {
  ANVIL_CHECK(norm1_ && norm2_ && attn_ && ff_, b.prefix, ": the block spec left a slot empty (norm, attention or "
              "feed_forward factory returned null) — every block needs all three");
  if (spec.gate) {
    gates_[0] = spec.gate(b, SubBlock::Attention);
    gates_[1] = spec.gate(b, SubBlock::FeedForward);
  }
  const bool hard[2] = {gates_[0] && gates_[0]->skip_unit() != GateSkip::None,
                        gates_[1] && gates_[1]->skip_unit() != GateSkip::None};
  routed_ = hard[0] || hard[1];
  ANVIL_CHECK(!routed_ || ((hard[0] || !gates_[0]) && (hard[1] || !gates_[1])), b.prefix,
              ": a block mixes a soft gate with a layer-skip router — give each block one kind of gate");
  ANVIL_CHECK(!(hard[0] && gates_[0]->skips_whole_block() && gates_[1]), b.prefix,
              ": a whole-block router on the attention slot leaves no room for a feed-forward gate");
  ANVIL_CHECK(!routed_ || !b.sequence, b.prefix, ": layer-skip routers under Ulysses sequence parallelism are not "
              "supported (a routed sub-block gathers whole sequences) — train routers with sp = 1");
}

TransformerBlock::TransformerBlock(const std::string& prefix, const ModelConfig& config,
                                   std::shared_ptr<const RopeTables> rope, Communicator* tp,
                                   std::shared_ptr<const SequenceParallelContext> sequence)
    : TransformerBlock(block_spec(config), BlockContext{prefix, config, family_of(config), std::move(rope), tp,
                                                        std::move(sequence)}) {}

namespace {
// Cache children: 0 norm1, 1 attention, 2 norm2, 3 feed-forward, 4 + sub a sub-block's gate.
constexpr const char* kGatedOut[2] = {"attention_out", "feed_forward_out"};
constexpr const char* kGateWeight[2] = {"attention_gate", "feed_forward_gate"};

// The gate kernels are plain loops over host f32 rows; the router issue adds device kernels.
void check_gate_operands(const Tensor& f, const Tensor& w) {
  ANVIL_CHECK(f.device().is_cpu() && f.dtype() == DType::F32 && w.device().is_cpu() && w.dtype() == DType::F32 &&
                  w.numel() * f.size(-1) == f.numel(),
              "block gate: sub-block output ", f.describe(), " and gate weights ", w.describe(),
              " must be host f32 with one weight per token — gated blocks run on the CPU in f32 for now "
              "(move the model back with to(cpu, f32), or drop the gate)");
}

// out = x + w * f per row.
Tensor gated_sum(const Tensor& x, const Tensor& f, const Tensor& w) {
  check_gate_operands(f, w);
  const Tensor xc = x.contiguous(), fc = f.contiguous(), wc = w.contiguous();
  Tensor out = empty_like(fc, fc.shape());
  const int64_t rows = wc.numel(), width = fc.size(-1);
  const float *px = xc.data<float>(), *pf = fc.data<float>(), *pw = wc.data<float>();
  float* po = out.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i) po[r * width + i] = px[r * width + i] + pw[r] * pf[r * width + i];
  return out;
}

// df = w * dy per row, and dw = the row dots of dy and f.
void gated_backward(const Tensor& dy, const Tensor& f, const Tensor& w, Tensor& df, Tensor& dw) {
  check_gate_operands(f, w);
  const Tensor dyc = dy.contiguous(), fc = f.contiguous(), wc = w.contiguous();
  df = empty_like(fc, fc.shape());
  dw = empty_like(wc, wc.shape());
  const int64_t rows = wc.numel(), width = fc.size(-1);
  const float *pdy = dyc.data<float>(), *pf = fc.data<float>(), *pw = wc.data<float>();
  float *pdf = df.data<float>(), *pdw = dw.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0;
    for (int64_t i = 0; i < width; ++i) {
      pdf[r * width + i] = pw[r] * pdy[r * width + i];
      dot += static_cast<double>(pdy[r * width + i]) * pf[r * width + i];
    }
    pdw[r] = static_cast<float>(dot);
  }
}
}  // namespace

Tensor TransformerBlock::residual(const Tensor& x, Tensor f, int sub, Cache& c) {
  if (!gates_[sub]) {
    kernels::add(f, x, f);  // written over the sub-block's output (nobody saved it)
    return f;
  }
  const Tensor w = gates_[sub]->forward(x, c.child(4 + sub));
  c[kGatedOut[sub]] = f;
  c[kGateWeight[sub]] = w;
  return gated_sum(x, f, w);
}

Tensor TransformerBlock::residual_backward(const Tensor& dy, int sub, Cache& c, Tensor& dx_gate) {
  if (!gates_[sub]) return dy;
  Tensor df, dw;
  gated_backward(dy, c.get(kGatedOut[sub]), c.get(kGateWeight[sub]), df, dw);
  c[kGatedOut[sub]] = Tensor();  // released as backward proceeds
  c[kGateWeight[sub]] = Tensor();
  dx_gate = gates_[sub]->backward(dw, c.child(4 + sub));
  return df.view(dy.shape());
}

Tensor TransformerBlock::forward(const Tensor& x, Cache& c) {
  if (routed_) return routed_forward(1, routed_forward(0, x, c), c);
  const int64_t tokens = x.size(0) * x.size(1);
  count(0, tokens, tokens);
  count(1, tokens, tokens);
  const Tensor h = residual(x, attn_->forward(norm1_->forward(x, c.child(0)), c.child(1)), 0, c);
  return residual(h, ff_->forward(norm2_->forward(h, c.child(2)), c.child(3)), 1, c);
}

Tensor TransformerBlock::forward_cached(const Tensor& x, KVLayer& kv, int64_t start_pos) {
  if (routed_) return routed_forward_cached(x, kv, start_pos);
  const int64_t tokens = x.size(0) * x.size(1);
  count(0, tokens, tokens);
  count(1, tokens, tokens);
  Tensor h = attn_->forward_cached(norm1_->infer(x), kv, start_pos);
  if (gates_[0]) h = gated_sum(x, h, gates_[0]->infer(x));
  else kernels::add(h, x, h);
  Tensor y = ff_->infer(norm2_->infer(h));
  if (gates_[1]) return gated_sum(h, y, gates_[1]->infer(h));
  kernels::add(y, h, y);
  return y;
}

Tensor TransformerBlock::backward(const Tensor& dy, Cache& c) {
  if (routed_) return routed_backward(0, routed_backward(1, dy, c), c);
  Tensor dh_gate, dx_gate;
  Tensor dh = norm2_->backward(ff_->backward(residual_backward(dy, 1, c, dh_gate), c.child(3)), c.child(2));
  kernels::add_inplace(dh, dy);  // residual branch
  if (dh_gate.defined()) kernels::add_inplace(dh, dh_gate);
  Tensor dx = norm1_->backward(attn_->backward(residual_backward(dh, 0, c, dx_gate), c.child(1)), c.child(0));
  kernels::add_inplace(dx, dh);
  if (dx_gate.defined()) kernels::add_inplace(dx, dx_gate);
  return dx;
}

void TransformerBlock::collect_linears(std::vector<LinearWeight*>& out) {
  attn_->collect_linears(out);
  ff_->collect_linears(out);
  for (auto& gate : gates_)
    if (gate) gate->collect_linears(out);
}

void TransformerBlock::collect_router_params(std::vector<Param*>& out) {
  for (auto& gate : gates_)
    if (gate && gate->skip_unit() != GateSkip::None) gate->collect_params(out);
}

RoutedRows& RoutedRows::operator+=(const RoutedRows& o) {
  attention_run += o.attention_run;
  attention_total += o.attention_total;
  mlp_run += o.mlp_run;
  mlp_total += o.mlp_total;
  return *this;
}

void TransformerBlock::collect_params(std::vector<Param*>& out) {
  norm1_->collect_params(out);
  attn_->collect_params(out);
  norm2_->collect_params(out);
  ff_->collect_params(out);
  for (auto& gate : gates_)
    if (gate) gate->collect_params(out);
}

size_t TransformerBlock::activation_bytes(const ActivationDims& d) const {
  size_t bytes = norm1_->activation_bytes(d) + attn_->activation_bytes(d) + norm2_->activation_bytes(d) +
                 ff_->activation_bytes(d);
  const size_t hidden = static_cast<size_t>(attn_->shape().hidden);
  for (const auto& gate : gates_)
    if (gate) bytes += gate->activation_bytes(d) + d.tokens * hidden * d.act + d.tokens * d.stat;
  return bytes;
}

}  // namespace anvil
