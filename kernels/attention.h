// Causal scaled-dot-product attention with grouped-query heads, computed blockwise
// (online softmax) so memory is O(T * block) per head, never O(T^2). Optionally masked
// further by a sliding window and by document boundaries (packed sequences).
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// What a query may see besides causality. The mask is defined on key slots (the order of
// k/v along T), not on position ids: query i sits at slot q_offset + i and sees key slot j iff
//   j <= q_offset + i                                   (causal, always)
//   and, when window > 0, j > q_offset + i - window     (sliding window, Mistral's)
//   and, when segment_ids is defined, segment_ids[b, j] == segment_ids[b, q_offset + i]
//                                                       (same document, packed sequences).
// Position ids (RoPE, learned positions) never enter the mask: inside one document of a
// packed row positions restart at 0 and run contiguously, so a window over slots is the
// same as a window over positions.
//
// segment_ids: i32 [B, Tk] contiguous, on q's device, one document id per key slot,
// non-decreasing along each row (documents are contiguous runs, in order; padding may be a
// run of its own). It is the per-row form of flash-attention's cu_seqlens: a fixed [B, T]
// window needs no ragged offsets, slices under sequence parallelism like the tokens do, and
// costs one lookup per score in the GPU kernel. The CPU backend checks the order; the CUDA
// backend trusts it (the host that built the batch checked it: see models/step_context.h).
//
// group_ids is reserved for the block/group masks of parallel drafting (a later issue);
// every backend refuses a defined one for now.
struct AttentionMask {
  int64_t window = 0;   // 0: no lower bound
  Tensor segment_ids;   // undefined: one document per row
  Tensor group_ids;     // reserved; must be undefined
};

// q: [B, Tq, Hq, D]; k, v: [B, Tk, Hkv, D] with Hq % Hkv == 0 (query head h uses
// KV head h / (Hq / Hkv)). Last dim contiguous; other strides free (q/k/v may be
// views into a fused projection). Query i sits at position q_offset + i and sees
// keys j <= q_offset + i (q_offset = Tk - Tq for decoding with a KV cache; 0 when
// training). out: [B, Tq, Hq, D] (may be a strided view); lse: f32 [B, Hq, Tq]
// contiguous, the row log-sum-exp of the scaled scores, saved for backward.
// window > 0 is a sliding window (Mistral's sliding_window): query i then sees only keys
// q_offset + i - window < j <= q_offset + i, the last `window` positions including its own;
// key blocks wholly outside every query's window are skipped. window = 0: no lower bound.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                       int64_t q_offset, Tensor& out, Tensor& lse, int64_t window = 0);
// The same under a full mask description (AttentionMask above). With segment_ids undefined
// it is exactly the call above (same code path, same numerics).
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                       int64_t q_offset, Tensor& out, Tensor& lse, const AttentionMask& mask);

// Recomputes the scores blockwise from q, k and lse. dq, dk, dv assigned (same
// shapes as q, k, v; may be strided views into one fused gradient buffer). `window` as in forward.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, float scale, int64_t q_offset,
                        Tensor& dq, Tensor& dk, Tensor& dv, int64_t window = 0);
// The same under the forward's mask description.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, float scale, int64_t q_offset,
                        Tensor& dq, Tensor& dk, Tensor& dv, const AttentionMask& mask);

}  // namespace anvil::kernels
