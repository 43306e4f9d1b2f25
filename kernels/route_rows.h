// Row gather / scatter for layer-skip routing (models/block.cpp): a sub-block runs on the
// active rows of a [N, C] activation only. `index` names, for each row of the compact tensor,
// its row in the full one, or -1 for a padding row (a sequence compacted to fewer tokens than
// the longest). Activations f32 (CPU) or f32 / bf16 (CUDA); index i32 on the same device.
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// out[i, :] = full[index[i], :], zeros where index[i] = -1. full [N, C], index [M], out [M, C]
// (assigned). An index outside [-1, N) throws (CPU) naming it and its slot.
void gather_rows(const Tensor& full, const Tensor& index, Tensor& out);
// full[index[i], :] += compact[i, :] for index[i] >= 0 (padding rows are dropped). The indices
// >= 0 must be distinct (each full row receives at most one compact row: no atomics needed);
// the CPU backend checks it.
void scatter_add_rows(const Tensor& compact, const Tensor& index, Tensor& full);
// out[i] = sum_j a[i, j] * b[i, j] in f32 (out f32 [M], assigned): the gate's dL/dg per row.
void row_dot(const Tensor& a, const Tensor& b, Tensor& out);

}  // namespace anvil::kernels
