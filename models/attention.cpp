#include "models/attention.h"

#include <cmath>

#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/rope.h"

namespace anvil {

std::shared_ptr<const RopeTables> make_rope_tables(int64_t head_dim, int64_t max_positions, double theta) {
  auto tables = std::make_shared<RopeTables>();
  kernels::rope_tables(kernels::rope_inv_freq(head_dim, theta), max_positions, tables->cos, tables->sin);
  return tables;
}

namespace {
const char* out_name(Attention::Projection p) { return p == Attention::Projection::Fused ? "c_proj" : "o_proj"; }
}  // namespace

Attention::Attention(const std::string& prefix, const AttentionShape& shape, Projection projection,
                     std::shared_ptr<const RopeTables> rope)
    : shape_(shape),
      projection_(projection),
      rope_(std::move(rope)),
      out_(prefix + "." + out_name(projection), shape.num_heads * shape.head_dim, shape.hidden, shape.bias) {
  ANVIL_CHECK(shape.num_heads % shape.num_kv_heads == 0, prefix, ": num_key_value_heads = ", shape.num_kv_heads,
              " does not divide num_attention_heads = ", shape.num_heads);
  const int64_t q_dim = shape.num_heads * shape.head_dim, kv_dim = shape.num_kv_heads * shape.head_dim;
  if (projection == Projection::Fused) {
    qkv_.emplace(prefix + ".c_attn", shape.hidden, q_dim + 2 * kv_dim, shape.bias);
  } else {
    q_.emplace(prefix + ".q_proj", shape.hidden, q_dim, shape.bias);
    k_.emplace(prefix + ".k_proj", shape.hidden, kv_dim, shape.bias);
    v_.emplace(prefix + ".v_proj", shape.hidden, kv_dim, shape.bias);
  }
}

Tensor Attention::forward(const Tensor& x, Cache& c) {
  ANVIL_CHECK(x.dim() == 3, "attention input must be [B, T, hidden], got ", x.describe());
  const int64_t B = x.size(0), T = x.size(1), H = shape_.num_heads, Hkv = shape_.num_kv_heads,
                D = shape_.head_dim;
  Tensor q, k, v;
  if (projection_ == Projection::Fused) {
    Tensor qkv = qkv_->forward(x, c.child(0)).view({B, T, H + 2 * Hkv, D});
    q = qkv.slice(2, 0, H);
    k = qkv.slice(2, H, H + Hkv);
    v = qkv.slice(2, H + Hkv, H + 2 * Hkv);
  } else {
    q = q_->forward(x, c.child(0)).view({B, T, H, D});
    k = k_->forward(x, c.child(1)).view({B, T, Hkv, D});
    v = v_->forward(x, c.child(2)).view({B, T, Hkv, D});
  }
  if (rope_) {
    kernels::rope_forward(q, rope_->cos, rope_->sin, 0);
    kernels::rope_forward(k, rope_->cos, rope_->sin, 0);
  }
  Tensor attn = Tensor::empty({B, T, H, D});
  Tensor lse = Tensor::empty({B, H, T});
  kernels::attention_forward(q, k, v, 1.0f / std::sqrt(static_cast<float>(D)), 0, attn, lse);
  c["q"] = q;
  c["k"] = k;
  c["v"] = v;
  c["attn"] = attn;
  c["lse"] = lse;
  return out_.forward(attn.view({B, T, H * D}), c.child(3));
}

Tensor Attention::backward(const Tensor& dy, Cache& c) {
  const Tensor q = c.get("q"), k = c.get("k"), v = c.get("v");
  const int64_t B = q.size(0), T = q.size(1), H = shape_.num_heads, Hkv = shape_.num_kv_heads,
                D = shape_.head_dim;
  const Tensor dattn = out_.backward(dy, c.child(3)).view({B, T, H, D});
  Tensor dq, dk, dv, dqkv;
  if (projection_ == Projection::Fused) {
    dqkv = Tensor::empty({B, T, H + 2 * Hkv, D});
    dq = dqkv.slice(2, 0, H);
    dk = dqkv.slice(2, H, H + Hkv);
    dv = dqkv.slice(2, H + Hkv, H + 2 * Hkv);
  } else {
    dq = Tensor::empty({B, T, H, D});
    dk = Tensor::empty({B, T, Hkv, D});
    dv = Tensor::empty({B, T, Hkv, D});
  }
  kernels::attention_backward(dattn, q, k, v, c.get("attn"), c.get("lse"), 1.0f / std::sqrt(static_cast<float>(D)),
                              0, dq, dk, dv);
  c.clear_own();  // q/k/v/attn are no longer needed; free them before the projections' backward
  if (rope_) {
    kernels::rope_backward(dq, rope_->cos, rope_->sin, 0);
    kernels::rope_backward(dk, rope_->cos, rope_->sin, 0);
  }
  if (projection_ == Projection::Fused) return qkv_->backward(dqkv.view({B, T, -1}), c.child(0));
  Tensor dx = q_->backward(dq.view({B, T, H * D}), c.child(0));
  kernels::add_inplace(dx, k_->backward(dk.view({B, T, Hkv * D}), c.child(1)));
  kernels::add_inplace(dx, v_->backward(dv.view({B, T, Hkv * D}), c.child(2)));
  return dx;
}

void Attention::collect_params(std::vector<Param*>& out) {
  if (projection_ == Projection::Fused) {
    qkv_->collect_params(out);
  } else {
    q_->collect_params(out);
    k_->collect_params(out);
    v_->collect_params(out);
  }
  out_.collect_params(out);
}

}  // namespace anvil
