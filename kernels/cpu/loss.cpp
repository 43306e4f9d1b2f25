// Fused softmax cross-entropy on the CPU, one row at a time (two passes over the
// row: max, then sum of exp), parallel over rows; no [N, V] buffer is made.
#include "kernels/loss.h"

#include <cmath>

#include "kernels/backend.h"
#include "kernels/cpu/common.h"

namespace anvil::kernels {
namespace {

// Throws naming the first bad row, its target and V.
void check_targets(const char* op, const int32_t* t, int64_t n, int64_t V, int ignore_index) {
  for (int64_t i = 0; i < n; ++i) {
    ANVIL_CHECK(t[i] == ignore_index || (t[i] >= 0 && t[i] < V), op, ": target ", t[i], " at row ", i,
                " is outside [0, ", V, ") (V = ", V, ") and is not ignore_index (", ignore_index,
                ") — check the labels against the vocabulary size");
  }
}

const int32_t* targets_for(const char* op, const Tensor& targets, const cpu::Rows& vl, const Tensor& logits) {
  const int32_t* pt = cpu::contiguous_i32(op, "targets", targets);
  ANVIL_CHECK(targets.numel() == vl.rows, op, ": targets has shape ", shape_str(targets.shape()), " but logits ",
              shape_str(logits.shape()), " has ", vl.rows, " rows — targets needs one label per row");
  return pt;
}

}  // namespace

int64_t cross_entropy_forward(const Tensor& logits, const Tensor& targets, int ignore_index, Tensor& losses,
                              Tensor& lse) {
  ANVIL_DISPATCH_CUDA(logits, cross_entropy_forward, logits, targets, ignore_index, losses, lse);
  constexpr const char* op = "cross_entropy_forward";
  const cpu::Rows vl = cpu::as_rows(op, "logits", logits);
  const int32_t* pt = targets_for(op, targets, vl, logits);
  float* pl = cpu::contiguous_f32(op, "losses", losses);
  float* ps = cpu::contiguous_f32(op, "lse", lse);
  cpu::require_numel(op, "losses", losses, vl.rows, "one loss per row of logits");
  cpu::require_numel(op, "lse", lse, vl.rows, "one value per row of logits");
  const int64_t N = vl.rows, V = vl.cols;
  ANVIL_CHECK(V > 0 || N == 0, op, ": logits ", logits.describe(), " has an empty vocabulary dimension");
  check_targets(op, pt, N, V, ignore_index);
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) count += pt[i] != ignore_index;
  cpu::parallel_rows(N, V, [&](int64_t i) {
    const float* x = vl.row(i);
    float m = x[0];
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < V; ++j) m = std::max(m, x[j]);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < V; ++j) s += cpu::vexp(x[j] - m);
    const float l = m + std::log(s);
    ps[i] = l;
    pl[i] = pt[i] == ignore_index ? 0.0f : l - x[pt[i]];
  });
  return count;
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, int ignore_index,
                            float grad_scale, Tensor& dlogits) {
  ANVIL_DISPATCH_CUDA(logits, cross_entropy_backward, logits, targets, lse, ignore_index, grad_scale, dlogits);
  constexpr const char* op = "cross_entropy_backward";
  const cpu::Rows vl = cpu::as_rows(op, "logits", logits), vd = cpu::as_rows(op, "dlogits", dlogits);
  cpu::require_same_shape(op, "dlogits", dlogits, "logits", logits);
  const int32_t* pt = targets_for(op, targets, vl, logits);
  const float* ps = cpu::contiguous_f32(op, "lse", lse);
  cpu::require_numel(op, "lse", lse, vl.rows, "one value per row of logits");
  const int64_t N = vl.rows, V = vl.cols;
  check_targets(op, pt, N, V, ignore_index);
  cpu::parallel_rows(N, V, [&](int64_t i) {
    const float* x = vl.row(i);
    float* d = vd.row(i);  // may alias x: x[j] is read before d[j] is written
    const int32_t t = pt[i];
    if (t == ignore_index) {
      for (int64_t j = 0; j < V; ++j) d[j] = 0.0f;
      return;
    }
    const float l = ps[i];
    for (int64_t j = 0; j < V; ++j) d[j] = grad_scale * cpu::vexp(x[j] - l);
    d[t] -= grad_scale;
  });
}

void cross_entropy_shard_stats(const Tensor& logits, const Tensor& targets, int64_t vocab_start, int ignore_index,
                               Tensor& row_max, Tensor& sum_exp, Tensor& target_logit) {
  ANVIL_DISPATCH_CUDA(logits, cross_entropy_shard_stats, logits, targets, vocab_start, ignore_index, row_max, sum_exp, target_logit);
  constexpr const char* op = "cross_entropy_shard_stats";
  const cpu::Rows vl = cpu::as_rows(op, "logits", logits);
  const int32_t* pt = targets_for(op, targets, vl, logits);
  float* pm = cpu::contiguous_f32(op, "row_max", row_max);
  float* ps = cpu::contiguous_f32(op, "sum_exp", sum_exp);
  float* px = cpu::contiguous_f32(op, "target_logit", target_logit);
  for (const Tensor* t : {&row_max, &sum_exp, &target_logit})
    cpu::require_numel(op, "row statistics", *t, vl.rows, "one value per row of logits");
  const int64_t N = vl.rows, V = vl.cols;
  ANVIL_CHECK(V > 0 || N == 0, op, ": logits ", logits.describe(), " has an empty vocabulary shard");
  cpu::parallel_rows(N, V, [&](int64_t i) {
    const float* x = vl.row(i);
    float m = x[0];
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < V; ++j) m = std::max(m, x[j]);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < V; ++j) s += cpu::vexp(x[j] - m);
    pm[i] = m;
    ps[i] = s;
    const int64_t local = static_cast<int64_t>(pt[i]) - vocab_start;
    px[i] = pt[i] != ignore_index && local >= 0 && local < V ? x[local] : 0.0f;
  });
}

void cross_entropy_shard_backward(const Tensor& logits, const Tensor& targets, int64_t vocab_start,
                                  const Tensor& lse, int ignore_index, float grad_scale, Tensor& dlogits) {
  ANVIL_DISPATCH_CUDA(logits, cross_entropy_shard_backward, logits, targets, vocab_start, lse, ignore_index, grad_scale, dlogits);
  constexpr const char* op = "cross_entropy_shard_backward";
  const cpu::Rows vl = cpu::as_rows(op, "logits", logits), vd = cpu::as_rows(op, "dlogits", dlogits);
  cpu::require_same_shape(op, "dlogits", dlogits, "logits", logits);
  const int32_t* pt = targets_for(op, targets, vl, logits);
  const float* ps = cpu::contiguous_f32(op, "lse", lse);
  cpu::require_numel(op, "lse", lse, vl.rows, "one value per row of logits");
  const int64_t N = vl.rows, V = vl.cols;
  cpu::parallel_rows(N, V, [&](int64_t i) {
    const float* x = vl.row(i);
    float* d = vd.row(i);  // may alias x: x[j] is read before d[j] is written
    if (pt[i] == ignore_index) {
      for (int64_t j = 0; j < V; ++j) d[j] = 0.0f;
      return;
    }
    const float l = ps[i];
    for (int64_t j = 0; j < V; ++j) d[j] = grad_scale * cpu::vexp(x[j] - l);
    const int64_t local = static_cast<int64_t>(pt[i]) - vocab_start;
    if (local >= 0 && local < V) d[local] -= grad_scale;
  });
}

}  // namespace anvil::kernels
