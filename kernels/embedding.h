// Embedding lookup (forward) and scatter-add of row gradients (backward).
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// ids: i32 [N] (any shape, flattened); table: [V, C]; out: [N, C] (assigned).
// An id outside [0, V) throws an Error naming the id, its position and V.
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);
// dtable[ids[i], :] += dout[i, :]; deterministic (no atomics, fixed order per row).
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);

}  // namespace anvil::kernels
