// Attention of the nodes of a draft tree over a KV-cache row (tree speculative decoding,
// eval/speculative_tree.h): every node sees the row's committed prefix and, among the tree's
// nodes, only its ancestors and itself, so the siblings of one tree are scored in one call
// without seeing each other.
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// q: [B, T, Hq, D], the T tree nodes of each row; k, v: [B, Tk, Hkv, D] with Hq % Hkv == 0
// (query head h uses KV head h / (Hq / Hkv)), holding the prefix in slots 0 .. prefix − 1 and the
// nodes in slots prefix .. prefix + T − 1 (Tk >= prefix + T; later slots are not read). Last dim
// contiguous, other strides free. Node i sees every prefix slot and node slot prefix + j iff
// visible[i, j] != 0. visible: i32 [T, T] contiguous on q's device with visible[i, i] = 1 (the
// CPU backend checks that; the CUDA backend trusts the host that built it, KVCache::set_tree).
// out: [B, T, Hq, D] (may be a strided view). f32 on the CPU; f32 or bf16 on CUDA.
void tree_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int64_t prefix,
                            const Tensor& visible, Tensor& out);

}  // namespace anvil::kernels
