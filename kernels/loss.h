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

// The local halves of vocab-parallel cross-entropy (parallel/tensor_parallel.h does the
// collectives): logits [N, Vs] are columns [vocab_start, vocab_start + Vs) of the full rows.
// Writes row_max[i] = the shard row's max, sum_exp[i] = sum_j exp(x_j - row_max[i]) and
// target_logit[i] = the target's logit when it falls in the shard (0 otherwise or when ignored).
// Targets are not range-checked here (the caller checks them against the full vocabulary).
void cross_entropy_shard_stats(const Tensor& logits, const Tensor& targets, int64_t vocab_start, int ignore_index,
                               Tensor& row_max, Tensor& sum_exp, Tensor& target_logit);
// dlogits = grad_scale * (exp(x - lse[i]) - onehot(target - vocab_start)) with lse the
// global log-sum-exp; zero for ignored rows. May alias logits; assigned.
void cross_entropy_shard_backward(const Tensor& logits, const Tensor& targets, int64_t vocab_start,
                                  const Tensor& lse, int ignore_index, float grad_scale, Tensor& dlogits);

}  // namespace anvil::kernels
