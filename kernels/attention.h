// Causal scaled-dot-product attention with grouped-query heads, computed blockwise
// (online softmax) so memory is O(T * block) per head, never O(T^2).
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

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

// Recomputes the scores blockwise from q, k and lse. dq, dk, dv assigned (same
// shapes as q, k, v; may be strided views into one fused gradient buffer). `window` as in forward.
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, float scale, int64_t q_offset,
                        Tensor& dq, Tensor& dk, Tensor& dv, int64_t window = 0);

}  // namespace anvil::kernels
