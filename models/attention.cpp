#include "models/attention.h"

#include <cmath>

#include "kernels/attention.h"
#include "kernels/tree_attention.h"
#include "kernels/elementwise.h"
#include "kernels/rope.h"
#include "parallel/ulysses.h"

namespace anvil {

std::shared_ptr<RopeTables> make_rope_tables(int64_t head_dim, int64_t max_positions, double theta,
                                             const RopeScaling& scaling) {
  auto tables = std::make_shared<RopeTables>();
  kernels::rope_tables(scaling.apply(kernels::rope_inv_freq(head_dim, theta)), max_positions, tables->cos,
                       tables->sin);
  return tables;
}

namespace {
// dst[:, start:start+T] = src for [B, T, H, D] tensors (any device; the cache's dtype is the model's).
void write_positions(Tensor& dst, const Tensor& src, int64_t start) {
  Tensor slot = dst.slice(1, start, start + src.size(1));
  slot.copy_(src);
}

// The full shape checked, then with this rank's head counts (whole KV groups per rank).
AttentionShape local_shape(const std::string& prefix, AttentionShape s, const Communicator* tp) {
  ANVIL_CHECK(s.num_heads % s.num_kv_heads == 0, prefix, ": num_key_value_heads = ", s.num_kv_heads,
              " does not divide num_attention_heads = ", s.num_heads);
  const int degree = tp ? tp->size() : 1;
  ANVIL_CHECK(s.num_kv_heads % degree == 0, prefix, ": tp = ", degree, " does not divide num_key_value_heads = ",
              s.num_kv_heads, " — each rank holds whole KV heads; pick a tensor-parallel degree that divides it");
  s.num_heads /= degree;
  s.num_kv_heads /= degree;
  return s;
}
}  // namespace

Attention::Attention(const std::string& prefix, const AttentionShape& shape, Projection projection,
                     std::shared_ptr<const RopeTables> rope, Communicator* tp,
                     std::shared_ptr<const SequenceParallelContext> sequence)
    : shape_(local_shape(prefix, shape, tp)),
      projection_(projection),
      rope_(std::move(rope)),
      sequence_(std::move(sequence)),
      out_(prefix + "." + attention_names(projection).out, shape.num_heads * shape.head_dim, shape.hidden,
           shape.out_bias, tp, Init::ResidualNormal) {
  const AttentionNames& names = attention_names(projection);
  if (sequence_) check_ulysses_heads(sequence_->sp->size(), shape_.num_heads, shape_.num_kv_heads);
  const int64_t q_dim = shape.num_heads * shape.head_dim, kv_dim = shape.num_kv_heads * shape.head_dim;
  if (projection == Projection::Fused) {
    // q, k and v rows are split separately, so each rank's c_attn is [its q | its k | its v].
    qkv_.emplace(prefix + "." + names.qkv, shape.hidden, q_dim + 2 * kv_dim, shape.bias, tp,
                 std::vector<int64_t>{q_dim, kv_dim, kv_dim});
  } else {
    q_.emplace(prefix + "." + names.q, shape.hidden, q_dim, shape.bias, tp);
    k_.emplace(prefix + "." + names.k, shape.hidden, kv_dim, shape.bias, tp);
    v_.emplace(prefix + "." + names.v, shape.hidden, kv_dim, shape.bias, tp);
  }
}

const StepContext& Attention::step_context(const Cache& c) const {
  const StepContext& ctx = c.context();
  ANVIL_CHECK(ctx.sp == nullptr || (sequence_ && ctx.sp == sequence_->sp),
              "attention: the step context names an sp group the model was not built with — per-step sp groups "
              "are not supported yet; build the model with that sp communicator or leave StepContext::sp null");
  ANVIL_CHECK(!(sequence_ && ctx.mask.has_documents()),
              "attention: packed documents (StepContext mask.segment_ids) under Ulysses sequence parallelism are "
              "not supported yet — train packed data with sp = 1, or use data.packing: none under sp");
  ANVIL_CHECK(!(sequence_ && ctx.mask.has_groups()),
              "attention: drafting groups (StepContext mask.group_ids) under Ulysses sequence parallelism are not "
              "supported yet — train ParallelSpec drafters with sp = 1");
  return ctx;
}

// RoPE on q and k at explicit positions when given, else at start .. start + T - 1.
void Attention::rotate(Tensor& q, Tensor& k, const Tensor& positions, int64_t start) const {
  if (!rope_) return;
  if (positions.defined()) {
    kernels::rope_forward(q, rope_->cos, rope_->sin, positions);
    kernels::rope_forward(k, rope_->cos, rope_->sin, positions);
  } else {
    kernels::rope_forward(q, rope_->cos, rope_->sin, start);
    kernels::rope_forward(k, rope_->cos, rope_->sin, start);
  }
}

Tensor Attention::forward(const Tensor& x, Cache& c) {
  const StepContext& ctx = step_context(c);
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
  const int64_t start = sequence_ ? sequence_->start() : 0;  // global position of x's first token
  rotate(q, k, ctx.position_ids, start);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  Tensor attn = empty_like(x, {B, T, H, D});
  if (sequence_) {
    // Scatter heads, gather the sequence, attend, and back (parallel/ulysses.h).
    const UlyssesSaved s = ulysses_attention_forward(*sequence_->sp, sequence_->part, q, k, v, scale, attn, shape_.window);
    c["qkv_heads"] = s.qkv;
    c["attn_heads"] = s.out;
    c["lse"] = s.lse;
    Tensor sequence = Tensor::empty({2}, DType::I64);
    sequence.data<int64_t>()[0] = s.part.total;
    sequence.data<int64_t>()[1] = start;
    c["sequence"] = sequence;  // this forward's T and slice start (the context moves on)
  } else {
    Tensor lse = empty_like(x, {B, H, T}, DType::F32);
    kernels::attention_forward(q, k, v, scale, 0, attn, lse, ctx.mask.for_kernel(shape_.window));
    c["q"] = q;
    c["k"] = k;
    c["v"] = v;
    c["attn"] = attn;
    c["lse"] = lse;
  }
  return out_.forward(attn.view({B, T, H * D}), c.child(3));
}

Tensor Attention::forward_cached(const Tensor& x, KVLayer& kv, int64_t start_pos) {
  ANVIL_CHECK(x.dim() == 3, "attention input must be [B, T, hidden], got ", x.describe());
  const int64_t B = x.size(0), T = x.size(1), H = shape_.num_heads, Hkv = shape_.num_kv_heads,
                D = shape_.head_dim;
  ANVIL_CHECK(kv.k.dim() == 4 && kv.k.size(0) == B && kv.k.size(2) == Hkv && kv.k.size(3) == D &&
                  kv.v.shape() == kv.k.shape(),
              "attention KV cache ", kv.k.describe(), " does not fit input ", x.describe(), " with ", Hkv,
              " KV heads of dim ", D, " — build the KVCache for this model and batch");
  ANVIL_CHECK(start_pos >= 0, "attention KV cache: start_pos must be >= 0, got ", start_pos);
  Tensor q, k, v;
  if (projection_ == Projection::Fused) {
    Tensor qkv = qkv_->infer(x).view({B, T, H + 2 * Hkv, D});
    q = qkv.slice(2, 0, H);
    k = qkv.slice(2, H, H + Hkv);
    v = qkv.slice(2, H + Hkv, H + 2 * Hkv);
  } else {
    q = q_->infer(x).view({B, T, H, D});
    k = k_->infer(x).view({B, T, Hkv, D});
    v = v_->infer(x).view({B, T, Hkv, D});
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  Tensor attn = empty_like(x, {B, T, H, D});
  if (kv.rows && kv.rows->tree.defined()) {
    // A draft tree (KVCache::set_tree): each row's nodes see its cached slots and their ancestors.
    ANVIL_CHECK(shape_.window == 0, "attention KV cache: a draft tree under a sliding window (", shape_.window,
                ") is not supported — verify with a chain (tree width 1 uses the chain decoder) for this model");
    rotate(q, k, kv.rows->positions, 0);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t start = kv.rows->lengths[static_cast<size_t>(b)], stop = start + T;
      ANVIL_CHECK(stop <= kv.k.size(1), "attention KV cache: row ", b, " slots ", start, " .. ", stop - 1,
                  " exceed its max_len = ", kv.k.size(1));
      Tensor kb = kv.k.slice(0, b, b + 1), vb = kv.v.slice(0, b, b + 1);
      write_positions(kb, k.slice(0, b, b + 1), start);
      write_positions(vb, v.slice(0, b, b + 1), start);
      Tensor out_b = attn.slice(0, b, b + 1);
      kernels::tree_attention_forward(q.slice(0, b, b + 1), kb.slice(1, 0, stop), vb.slice(1, 0, stop), scale, start,
                                      kv.rows->tree, out_b);
    }
    return out_.infer(attn.view({B, T, H * D}));
  }
  if (!kv.rows || kv.rows->uniform()) {
    // Every row continues at one slot (a hand-built layer: start_pos): today's single call.
    const int64_t start = kv.rows ? kv.rows->lengths.front() : start_pos;
    const int64_t stop = start + T;
    ANVIL_CHECK(stop <= kv.k.size(1), "attention KV cache: slots ", start, " .. ", stop - 1, " exceed its max_len = ",
                kv.k.size(1));
    rotate(q, k, kv.rows ? kv.rows->positions : Tensor(), start);
    write_positions(kv.k, k, start);
    write_positions(kv.v, v, start);
    Tensor lse = empty_like(x, {B, H, T}, DType::F32);  // required by the kernel; scratch here
    kernels::attention_forward(q, kv.k.slice(1, 0, stop), kv.v.slice(1, 0, stop), scale, start, attn, lse,
                               shape_.window);
    return out_.infer(attn.view({B, T, H * D}));
  }
  // Rows of different lengths: each row writes at its own slots and attends over its own keys.
  ANVIL_CHECK(kv.rows->positions.defined(), "attention KV cache: rows of different lengths need the call's position "
              "ids — decode through TransformerLM::forward_cached (KVCache::begin_step sets them)");
  rotate(q, k, kv.rows->positions, 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t start = kv.rows->lengths[static_cast<size_t>(b)], stop = start + T;
    ANVIL_CHECK(stop <= kv.k.size(1), "attention KV cache: row ", b, " slots ", start, " .. ", stop - 1,
                " exceed its max_len = ", kv.k.size(1));
    Tensor kb = kv.k.slice(0, b, b + 1), vb = kv.v.slice(0, b, b + 1);
    write_positions(kb, k.slice(0, b, b + 1), start);
    write_positions(vb, v.slice(0, b, b + 1), start);
    Tensor out_b = attn.slice(0, b, b + 1);
    Tensor lse = empty_like(x, {1, H, T}, DType::F32);
    kernels::attention_forward(q.slice(0, b, b + 1), kb.slice(1, 0, stop), vb.slice(1, 0, stop), scale, start, out_b,
                               lse, shape_.window);
  }
  return out_.infer(attn.view({B, T, H * D}));
}

Tensor Attention::backward(const Tensor& dy, Cache& c) {
  const StepContext& ctx = step_context(c);  // the forward's micro-batch context
  const int64_t B = dy.size(0), T = dy.size(1), H = shape_.num_heads, Hkv = shape_.num_kv_heads,
                D = shape_.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const Tensor dattn = out_.backward(dy, c.child(3)).view({B, T, H, D});
  Tensor dq, dk, dv, dqkv;
  if (projection_ == Projection::Fused) {
    dqkv = empty_like(dattn, {B, T, H + 2 * Hkv, D});
    dq = dqkv.slice(2, 0, H);
    dk = dqkv.slice(2, H, H + Hkv);
    dv = dqkv.slice(2, H + Hkv, H + 2 * Hkv);
  } else {
    dq = empty_like(dattn, {B, T, H, D});
    dk = empty_like(dattn, {B, T, Hkv, D});
    dv = empty_like(dattn, {B, T, Hkv, D});
  }
  int64_t start = 0;
  if (sequence_) {
    const int64_t* sequence = c.get("sequence").data<int64_t>();
    start = sequence[1];
    Communicator& sp = *sequence_->sp;
    const UlyssesSaved s = ulysses_saved(partition_sequence(sequence[0], sp.size()), H, Hkv, scale,
                                         c.get("qkv_heads"), c.get("attn_heads"), c.get("lse"), shape_.window);
    ulysses_attention_backward(sp, dattn, s, dq, dk, dv);
  } else {
    kernels::attention_backward(dattn, c.get("q"), c.get("k"), c.get("v"), c.get("attn"), c.get("lse"), scale, 0, dq,
                                dk, dv, ctx.mask.for_kernel(shape_.window));
  }
  c.clear_own();  // q/k/v/attn are no longer needed; free them before the projections' backward
  if (rope_ && ctx.position_ids.defined()) {
    kernels::rope_backward(dq, rope_->cos, rope_->sin, ctx.position_ids);
    kernels::rope_backward(dk, rope_->cos, rope_->sin, ctx.position_ids);
  } else if (rope_) {
    kernels::rope_backward(dq, rope_->cos, rope_->sin, start);
    kernels::rope_backward(dk, rope_->cos, rope_->sin, start);
  }
  if (projection_ == Projection::Fused) return qkv_->backward(dqkv.view({B, T, (H + 2 * Hkv) * D}), c.child(0));
  // q, k and v read the same input: one input-gradient reduction for the three.
  return column_parallel_backward({&*q_, &*k_, &*v_},
                                  {dq.view({B, T, H * D}), dk.view({B, T, Hkv * D}), dv.view({B, T, Hkv * D})},
                                  {&c.child(0), &c.child(1), &c.child(2)});
}

void Attention::collect_linears(std::vector<LinearWeight*>& out) {
  if (projection_ == Projection::Fused) {
    qkv_->collect_linears(out);
  } else {
    q_->collect_linears(out);
    k_->collect_linears(out);
    v_->collect_linears(out);
  }
  out_.collect_linears(out);
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

size_t Attention::activation_bytes(const ActivationDims& d) const {
  const size_t H = shape_.num_heads, Hkv = shape_.num_kv_heads, D = shape_.head_dim;  // this tp rank's heads
  const size_t input = d.tokens * shape_.hidden;  // q/k/v's input, saved once
  const size_t sp = sequence_ ? sequence_->sp->size() : 1;
  if (sp == 1) return (input + d.tokens * (H + 2 * Hkv) * D + d.tokens * H * D) * d.act + d.tokens * H * d.stat;
  const size_t all = d.batch * d.seq_len, h = H / sp, hkv = Hkv / sp;  // every position, this sp rank's heads
  return (input + all * (h + 2 * hkv) * D + all * h * D + d.tokens * H * D) * d.act + all * h * d.stat;
}

}  // namespace anvil
