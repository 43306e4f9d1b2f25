// Causal scaled-dot-product attention with grouped-query heads, computed blockwise
// (online softmax) so memory is O(T * block) per head, never O(T^2). Optionally masked
// further by a sliding window, by document boundaries (packed sequences) and by the groups
// of parallel drafting ([MASK] tokens that see their anchor's prefix).
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// What a query may see besides causality. The mask is defined on key slots (the order of
// k/v along T), not on position ids: query i sits at slot p = q_offset + i and sees key slot j iff
//   j <= p                                              (causal, always)
//   and, when window > 0, j > p - window                (sliding window, Mistral's)
//   and, when segment_ids is defined, segment_ids[b, j] == segment_ids[b, p]
//                                                       (same document, packed sequences)
//   and, when group_ids is defined, with g = group_ids[b, p] and gj = group_ids[b, j]:
//       gj == -1 ? (g == -1 || j <= g) : gj == g        (parallel-drafting groups)
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
// group_ids: i32 [B, Tk] contiguous, on q's device, one entry per key slot (query i reads
// slot q_offset + i). -1 marks a real token; a >= 0 marks a [MASK] token drafting for the
// real token at slot a of the same row (its anchor). The rule above then says: a real query
// sees only real keys; a mask query with anchor a sees the real keys j <= a and the mask keys
// of the same anchor up to its own slot. Mask blocks of many anchors can so be packed after
// the real tokens of a sequence (ParallelSpec's group-wise training; P-EAGLE's rule): real
// tokens never see masks, mask i of anchor t sees real tokens <= t and masks <= i of anchor t.
// Valid ids (check_group_ids): each in [-1, Tk), and a mask's anchor is a real token at an
// earlier slot, so every query sees at least itself. The CPU backend checks them; the CUDA
// backend trusts them (check_step_context checked them on the host).
struct AttentionMask {
  int64_t window = 0;   // 0: no lower bound
  Tensor segment_ids;   // undefined: one document per row
  Tensor group_ids;     // undefined: every token is real (no drafting groups)
};

// Throws unless group_ids (on the CPU) is contiguous i32 [B, Tk] and valid as described above,
// naming the row and slot of the first bad id; `where` names the caller in the message.
void check_group_ids(const Tensor& group_ids, int64_t B, int64_t Tk, const char* where);

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
// and group_ids undefined it is exactly the call above (same code path, same numerics).
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
