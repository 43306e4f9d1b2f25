// Fused softmax cross-entropy with ignore-index. Works one row at a time: no
// probability matrix is ever materialised beyond the row being processed.
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// logits: [N, V]; targets: i32 [N]. Writes losses[i] = logsumexp(row) - row[target]
// (0 where targets[i] == ignore_index) and lse[i] = logsumexp(row).
// Returns the number of rows that count (targets != ignore_index).
// A target outside [0, V) that is not ignore_index throws an Error.
int64_t cross_entropy_forward(const Tensor& logits, const Tensor& targets, int ignore_index,
                              Tensor& losses, Tensor& lse);
// dlogits[i, :] = grad_scale * (softmax(row) - onehot(target)), zero for ignored rows.
// dlogits may alias logits (the usual in-place use). Assigned, not accumulated.
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int ignore_index, float grad_scale, Tensor& dlogits);

}  // namespace anvil::kernels
