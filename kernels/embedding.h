// Embedding lookup (forward) and scatter-add of row gradients (backward).
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// ids: i32 [N] (any shape, flattened); table: [V, C]; out: [N, C] (assigned).
// An id outside [0, V) throws an Error naming the id, its position and V.
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);
// dtable[ids[i], :] += dout[i, :]; deterministic (no atomics, fixed order per row).
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);

// The same for a table split by rows over ranks (vocab-parallel embedding): table_shard
// holds ids [vocab_start, vocab_start + Vs). Ids outside it give zero rows (forward) and
// contribute nothing (backward). Ids are not range-checked here (the caller checks them
// against the full vocabulary).
void embedding_shard_forward(const Tensor& ids, const Tensor& table_shard, int64_t vocab_start, Tensor& out);
void embedding_shard_backward(const Tensor& ids, const Tensor& dout, int64_t vocab_start, Tensor& dtable_shard);

}  // namespace anvil::kernels
