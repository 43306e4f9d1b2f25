// Fused softmax cross-entropy on CUDA (kernels/loss.h): one block per row (grid-stride),
// one pass over the row keeping an online (max, sum of exp) pair per thread, combined over
// the block in a fixed order; no probability row is ever stored. Targets outside [0, V)
// that are not ignore_index set a device flag (the first bad row, an integer atomicMin)
// that the host reads back after the kernel to throw the CPU backend's Error.
#include <climits>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace anvil::kernels::cuda {
namespace {

constexpr unsigned long long kNoBadRow = ULLONG_MAX;

// (max, sum of exp(x - max)) pairs as float2 {x: max, y: sum}.
__device__ __forceinline__ float2 online_add(float2 a, float x) {
  if (x > a.x) {  // a NaN x never becomes the max; it poisons the sum below instead
    a.y = a.y * expf(a.x - x) + 1.0f;
    a.x = x;
  } else if (x != -INFINITY) {  // exp(-inf) adds 0, also while the max is still -inf
    a.y += expf(x - a.x);
  }
  return a;
}

struct MaxSumOp {
  __device__ float2 operator()(float2 a, float2 b) const {
    if (b.x > a.x) {
      const float2 t = a;
      a = b;
      b = t;
    }
    a.y += b.y == 0.0f ? 0.0f : b.y * expf(b.x - a.x);  // an empty side (max -inf) adds nothing
    return a;
  }
};

// What one statistics pass writes; null pointers are skipped. vocab_start shifts targets
// into the shard's columns (0 for full rows).
struct RowStatsOut {
  float* lse = nullptr;
  float* losses = nullptr;
  float* row_max = nullptr;
  float* sum_exp = nullptr;
  float* target_logit = nullptr;
  unsigned long long* first_bad = nullptr;  // full rows: the first row whose target is outside
  unsigned long long* count = nullptr;      // full rows: rows whose target is not ignore_index
  int64_t vocab_start = 0;
};

template <class T>
__global__ void row_stats_kernel(const T* logits, int64_t ld, int64_t N, int64_t V, const int32_t* targets,
                                 int ignore_index, RowStatsOut o) {
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* x = logits + r * ld;
    float2 ms = make_float2(-INFINITY, 0.0f);
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) ms = online_add(ms, to_f32(x[j]));
    ms = block_reduce(ms, MaxSumOp{}, make_float2(-INFINITY, 0.0f));
    if (threadIdx.x != 0) continue;
    const int32_t t = targets[r];
    const int64_t local = static_cast<int64_t>(t) - o.vocab_start;
    const bool ignored = t == ignore_index, inside = local >= 0 && local < V;
    const float l = ms.x + logf(ms.y);
    if (o.lse) o.lse[r] = l;
    if (o.losses) o.losses[r] = ignored || !inside ? 0.0f : l - to_f32(x[local]);
    if (o.row_max) o.row_max[r] = ms.x;
    if (o.sum_exp) o.sum_exp[r] = ms.y;
    if (o.target_logit) o.target_logit[r] = !ignored && inside ? to_f32(x[local]) : 0.0f;
    if (o.first_bad && !ignored && !inside) atomicMin(o.first_bad, static_cast<unsigned long long>(r));
    if (o.count && !ignored) atomicAdd(o.count, 1ull);  // integers: the total is exact in any order
  }
}

// d[r, :] = grad_scale * (exp(x - lse[r]) - onehot(target - vocab_start)), zero for
// ignored rows; d may alias logits (each element is read before it is written).
template <class T>
__global__ void softmax_grad_kernel(const T* logits, int64_t ld, T* d, int64_t d_ld, int64_t N, int64_t V,
                                    const int32_t* targets, int64_t vocab_start, int ignore_index, const float* lse,
                                    float grad_scale, unsigned long long* first_bad) {
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* x = logits + r * ld;
    T* dr = d + r * d_ld;
    const int32_t t = targets[r];
    if (t == ignore_index) {
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) dr[j] = from_f32<T>(0.0f);
      continue;
    }
    const int64_t local = static_cast<int64_t>(t) - vocab_start;
    if (first_bad && (local < 0 || local >= V) && threadIdx.x == 0)
      atomicMin(first_bad, static_cast<unsigned long long>(r));
    const float l = lse[r];
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float p = grad_scale * expf(to_f32(x[j]) - l);
      dr[j] = from_f32<T>(j == local ? p - grad_scale : p);
    }
  }
}

int row_threads(int64_t V) { return threads_for(V, 16, 512); }

const int32_t* targets_for(const OpContext& ctx, const Tensor& targets, const Rows& vl, const Tensor& logits) {
  const int32_t* pt = ctx.contiguous_i32("targets", targets);
  ANVIL_CHECK(targets.numel() == vl.rows, ctx.op(), ": targets has shape ", shape_str(targets.shape()),
              " but logits ", shape_str(logits.shape()), " has ", vl.rows,
              " rows — targets needs one label per row");
  return pt;
}

float* row_output(const OpContext& ctx, const char* name, const Tensor& t, int64_t rows, const char* what) {
  float* p = ctx.contiguous_f32(name, t);
  require_numel(ctx.op(), name, t, rows, what);
  return p;
}

// Device words {first bad row, count}, set to {none, 0}.
Tensor row_flags(const OpContext& ctx) {
  Tensor flags = ctx.scratch(2, DType::I64);
  ANVIL_CUDA_CHECK(cudaMemsetAsync(flags.raw_data(), 0, 2 * sizeof(unsigned long long), ctx.stream()));
  ANVIL_CUDA_CHECK(cudaMemsetAsync(flags.raw_data(), 0xff, sizeof(unsigned long long), ctx.stream()));
  return flags;
}

// Reads the flags back (one sync), throws the CPU backend's message for a bad target, and
// returns the count.
int64_t check_targets(const OpContext& ctx, const Tensor& flags, const int32_t* targets, int64_t V,
                      int ignore_index) {
  unsigned long long host[2] = {kNoBadRow, 0};
  ctx.read_back(host, flags.raw_data(), sizeof host);
  if (host[0] != kNoBadRow) {
    int32_t t = 0;
    ctx.read_back(&t, targets + host[0], sizeof t);
    ANVIL_FAIL(ctx.op(), ": target ", t, " at row ", host[0], " is outside [0, ", V, ") (V = ", V,
               ") and is not ignore_index (", ignore_index, ") — check the labels against the vocabulary size");
  }
  return static_cast<int64_t>(host[1]);
}

void launch_row_stats(const OpContext& ctx, const Rows& vl, const int32_t* targets, int ignore_index,
                      const RowStatsOut& out) {
  with_float_type(vl.dtype, [&](auto tag) {
    using T = decltype(tag);
    row_stats_kernel<T><<<blocks_for(vl.rows, 1), row_threads(vl.cols), 0, ctx.stream()>>>(
        static_cast<const T*>(vl.p), vl.ld, vl.rows, vl.cols, targets, ignore_index, out);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

void launch_softmax_grad(const OpContext& ctx, const Rows& vl, const Rows& vd, const int32_t* targets,
                         int64_t vocab_start, int ignore_index, const float* lse, float grad_scale,
                         unsigned long long* first_bad) {
  with_float_type(vl.dtype, [&](auto tag) {
    using T = decltype(tag);
    softmax_grad_kernel<T><<<blocks_for(vl.rows, 1), row_threads(vl.cols), 0, ctx.stream()>>>(
        static_cast<const T*>(vl.p), vl.ld, static_cast<T*>(vd.p), vd.ld, vl.rows, vl.cols, targets, vocab_start,
        ignore_index, lse, grad_scale, first_bad);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

int64_t cross_entropy_forward(const Tensor& logits, const Tensor& targets, int ignore_index, Tensor& losses,
                              Tensor& lse) {
  OpContext ctx("cross_entropy_forward", "logits", logits);
  const Rows vl = ctx.rows("logits", logits);
  const int32_t* pt = targets_for(ctx, targets, vl, logits);
  RowStatsOut out;
  out.losses = row_output(ctx, "losses", losses, vl.rows, "one loss per row of logits");
  out.lse = row_output(ctx, "lse", lse, vl.rows, "one value per row of logits");
  const int64_t N = vl.rows, V = vl.cols;
  ANVIL_CHECK(V > 0 || N == 0, ctx.op(), ": logits ", logits.describe(), " has an empty vocabulary dimension");
  if (N == 0) return 0;
  Tensor flags = row_flags(ctx);
  out.first_bad = static_cast<unsigned long long*>(flags.raw_data());
  out.count = out.first_bad + 1;
  launch_row_stats(ctx, vl, pt, ignore_index, out);
  return check_targets(ctx, flags, pt, V, ignore_index);
}

void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse, int ignore_index,
                            float grad_scale, Tensor& dlogits) {
  OpContext ctx("cross_entropy_backward", "logits", logits);
  const Rows vl = ctx.rows("logits", logits), vd = ctx.rows("dlogits", dlogits, logits.dtype());
  require_same_shape(ctx.op(), "dlogits", dlogits, "logits", logits);
  const int32_t* pt = targets_for(ctx, targets, vl, logits);
  const float* ps = row_output(ctx, "lse", lse, vl.rows, "one value per row of logits");
  if (vl.rows == 0 || vl.cols == 0) return;
  Tensor flags = row_flags(ctx);
  launch_softmax_grad(ctx, vl, vd, pt, 0, ignore_index, ps, grad_scale,
                      static_cast<unsigned long long*>(flags.raw_data()));
  check_targets(ctx, flags, pt, vl.cols, ignore_index);
}

void cross_entropy_shard_stats(const Tensor& logits, const Tensor& targets, int64_t vocab_start, int ignore_index,
                               Tensor& row_max, Tensor& sum_exp, Tensor& target_logit) {
  OpContext ctx("cross_entropy_shard_stats", "logits", logits);
  const Rows vl = ctx.rows("logits", logits);
  const int32_t* pt = targets_for(ctx, targets, vl, logits);
  RowStatsOut out;
  out.vocab_start = vocab_start;
  out.row_max = row_output(ctx, "row_max", row_max, vl.rows, "one value per row of logits");
  out.sum_exp = row_output(ctx, "sum_exp", sum_exp, vl.rows, "one value per row of logits");
  out.target_logit = row_output(ctx, "target_logit", target_logit, vl.rows, "one value per row of logits");
  ANVIL_CHECK(vl.cols > 0 || vl.rows == 0, ctx.op(), ": logits ", logits.describe(), " has an empty vocabulary shard");
  if (vl.rows == 0) return;
  launch_row_stats(ctx, vl, pt, ignore_index, out);
}

void cross_entropy_shard_backward(const Tensor& logits, const Tensor& targets, int64_t vocab_start, const Tensor& lse,
                                  int ignore_index, float grad_scale, Tensor& dlogits) {
  OpContext ctx("cross_entropy_shard_backward", "logits", logits);
  const Rows vl = ctx.rows("logits", logits), vd = ctx.rows("dlogits", dlogits, logits.dtype());
  require_same_shape(ctx.op(), "dlogits", dlogits, "logits", logits);
  const int32_t* pt = targets_for(ctx, targets, vl, logits);
  const float* ps = row_output(ctx, "lse", lse, vl.rows, "one value per row of logits");
  if (vl.rows == 0 || vl.cols == 0) return;
  launch_softmax_grad(ctx, vl, vd, pt, vocab_start, ignore_index, ps, grad_scale, nullptr);
}

}  // namespace anvil::kernels::cuda
