#include "parallel/tensor_parallel.h"

#include <cmath>

#include "kernels/elementwise.h"
#include "kernels/loss.h"

namespace anvil {

namespace {
bool active(const Communicator* tp) { return tp != nullptr && tp->size() > 1; }

// x as contiguous [rows, last].
Tensor as_rows(const Tensor& x) { return x.contiguous().view({-1, x.size(-1)}); }
}  // namespace

std::unique_ptr<CommHandle> CopyToTensorParallelRegion::backward_start(Communicator* tp, Tensor& dx) {
  if (!active(tp)) return std::make_unique<DoneHandle>();
  return tp->all_reduce_async(dx);
}

void ReduceFromTensorParallelRegion::forward(Communicator* tp, Tensor& y) {
  if (active(tp)) tp->all_reduce(y);
}

Tensor GatherFromTensorParallelRegion::forward(Communicator* tp, const Tensor& x) {
  if (!active(tp)) return x;
  const int n = tp->size();
  const Tensor local = as_rows(x);
  const int64_t rows = local.size(0), cols = local.size(1);
  Tensor gathered = empty_like(x, {n, rows, cols});
  tp->all_gather(local, gathered);
  // Rank-major [n, rows, cols] -> [rows, n * cols].
  Tensor out = empty_like(x, {rows, n * cols});
  for (int r = 0; r < n; ++r) out.slice(1, r * cols, (r + 1) * cols).copy_(gathered.select(0, r));
  Shape shape = x.shape();
  shape.back() = n * cols;
  return out.view(shape);
}

Tensor GatherFromTensorParallelRegion::backward(Communicator* tp, const Tensor& dy) {
  return ScatterToTensorParallelRegion::forward(tp, dy);
}

Tensor ScatterToTensorParallelRegion::forward(Communicator* tp, const Tensor& x) {
  if (!active(tp)) return x;
  const int64_t full = x.size(-1);
  ANVIL_CHECK(full % tp->size() == 0, "scatter to tensor-parallel region: last dim ", full, " of ", x.describe(),
              " does not split over tp = ", tp->size());
  const int64_t chunk = full / tp->size();
  return x.slice(x.dim() - 1, tp->rank() * chunk, (tp->rank() + 1) * chunk).contiguous();
}

Tensor ScatterToTensorParallelRegion::backward(Communicator* tp, const Tensor& dy) {
  return GatherFromTensorParallelRegion::forward(tp, dy);
}

int64_t vocab_shard_start(Communicator* tp, int64_t vocab_size) {
  if (!active(tp)) return 0;
  return tp->rank() * (vocab_size / tp->size());
}

int64_t VocabParallelCrossEntropy::forward(Communicator* tp, const Tensor& logits, int64_t vocab_start,
                                           int64_t vocab_size, const Tensor& targets, int ignore_index,
                                           Tensor& losses, Tensor& lse) {
  if (!active(tp)) return kernels::cross_entropy_forward(logits, targets, ignore_index, losses, lse);
  const int64_t N = targets.numel();
  check_dtype(targets, DType::I32, "vocab-parallel cross-entropy targets");
  ANVIL_CHECK(losses.numel() == N && lse.numel() == N, "vocab-parallel cross-entropy: losses ", losses.describe(),
              " and lse ", lse.describe(), " need one value per row (", N, ")");
  const Tensor flat_targets = targets.contiguous();
  // The per-row combination of the shards' statistics is O(N) scalar work, done on the host
  // (on a GPU the few row vectors cross explicitly; on the CPU the host tensors are the originals).
  const Tensor host_targets = flat_targets.to(Device::cpu());
  const int32_t* t = host_targets.data<int32_t>();
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    ANVIL_CHECK(t[i] == ignore_index || (t[i] >= 0 && t[i] < vocab_size), "vocab-parallel cross-entropy: target ",
                t[i], " at row ", i, " is outside [0, ", vocab_size, ") and is not ignore_index (", ignore_index,
                ") — check the labels against the vocabulary size");
    count += t[i] != ignore_index;
  }
  Tensor row_max = empty_like(logits, {N}, DType::F32);
  Tensor stats = empty_like(logits, {2, N}, DType::F32);  // [sum of exp, target logit]: one all-reduce for both
  Tensor sum_exp = stats.select(0, 0), target_logit = stats.select(0, 1);
  kernels::cross_entropy_shard_stats(logits, flat_targets, vocab_start, ignore_index, row_max, sum_exp, target_logit);
  Tensor global_max = row_max.clone();
  tp->all_reduce(global_max, ReduceOp::Max);
  const Tensor host_global_max = global_max.to(Device::cpu());
  const float* g = host_global_max.data<float>();
  {
    Tensor host_sum_exp = sum_exp.to(Device::cpu());
    const Tensor host_row_max = row_max.to(Device::cpu());
    float* s = host_sum_exp.data<float>();
    const float* m = host_row_max.data<float>();
    for (int64_t i = 0; i < N; ++i) s[i] *= std::exp(m[i] - g[i]);  // rescale to the global max
    if (!host_sum_exp.same_storage(sum_exp)) sum_exp.copy_(host_sum_exp);
  }
  tp->all_reduce(stats);
  const Tensor host_stats = stats.to(Device::cpu());
  Tensor host_losses = losses.to(Device::cpu()), host_lse = lse.to(Device::cpu());
  const float* s = host_stats.select(0, 0).data<float>();
  const float* x = host_stats.select(0, 1).data<float>();
  float* pl = host_losses.data<float>();
  float* ps = host_lse.data<float>();
  for (int64_t i = 0; i < N; ++i) {
    ps[i] = g[i] + std::log(s[i]);
    pl[i] = t[i] == ignore_index ? 0.0f : ps[i] - x[i];
  }
  if (!host_losses.same_storage(losses)) losses.copy_(host_losses);
  if (!host_lse.same_storage(lse)) lse.copy_(host_lse);
  return count;
}

void VocabParallelCrossEntropy::backward(Communicator* tp, const Tensor& logits, int64_t vocab_start,
                                         const Tensor& targets, const Tensor& lse, int ignore_index,
                                         float grad_scale, Tensor& dlogits) {
  if (!active(tp)) return kernels::cross_entropy_backward(logits, targets, lse, ignore_index, grad_scale, dlogits);
  kernels::cross_entropy_shard_backward(logits, targets, vocab_start, lse, ignore_index, grad_scale, dlogits);
}

}  // namespace anvil
