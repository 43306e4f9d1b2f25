// Distillation losses on CUDA (kernels/distill_loss.h): one block per row (grid-stride), the
// same three row passes as the CPU backend (statistics, terms, gradient), each ending in a
// fixed-order block reduction, so results are reproducible. Student and teacher may differ in
// dtype (f32 / bf16); arithmetic is f32. The filter thresholds are found by bisection on the
// bits of the logit (32 counting passes for top-k, 32 mass passes for top-p), which needs no
// sort and no scratch row.
#include <cmath>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/distill_loss.h"

namespace anvil::kernels::cuda {
namespace {

// What every row kernel reads: the divergence, 1/T, the thresholds (null: no filter), targets.
struct DistillRowArgs {
  int kind;
  float inv_t;
  const float* thp;
  const float* thq;
  const int32_t* targets;
  int ignore_index;
  int64_t N, V, ldq, ldp;
};

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

struct RowStats {
  float mq, sq, mp, sp, sqf;
};
struct Norms {
  float lq, lp, lqf;
};

template <class TS, class TT>
__device__ RowStats row_stats(const TS* zq, const TT* zp, const DistillRowArgs& a, float thp, float thq) {
  float mq = -INFINITY, mp = -INFINITY;
  for (int64_t j = threadIdx.x; j < a.V; j += blockDim.x) {
    mq = fmaxf(mq, to_f32(zq[j]) * a.inv_t);
    const float p = to_f32(zp[j]);
    if (p >= thp) mp = fmaxf(mp, p * a.inv_t);
  }
  mq = block_reduce(mq, MaxOp{}, -INFINITY);
  mp = block_reduce(mp, MaxOp{}, -INFINITY);
  float sq = 0, sp = 0, sqf = 0;
  for (int64_t j = threadIdx.x; j < a.V; j += blockDim.x) {
    const float q = to_f32(zq[j]), p = to_f32(zp[j]);
    const float e = expf(q * a.inv_t - mq);
    sq += e;
    if (q >= thq) sqf += e;
    if (p >= thp) sp += expf(p * a.inv_t - mp);
  }
  return {mq, block_sum(sq), mp, block_sum(sp), block_sum(sqf)};
}

struct Element {
  float loss, g;
};
// The loss term and g = dL/dq of one element (as the CPU backend's element<K>).
__device__ __forceinline__ Element element(int kind, float q, float logq, float p, float logp, bool kept) {
  switch (static_cast<Divergence>(kind)) {
    case Divergence::ForwardKL: return {p > 0.0f ? p * (logp - logq) : 0.0f, 0.0f};
    case Divergence::ReverseKL: {
      const float lp = kept ? logp : -INFINITY;
      return {q > 0.0f ? q * (logq - lp) : 0.0f, logq - lp};
    }
    case Divergence::TVD: return {0.5f * fabsf(p - q), p > q ? -0.5f : (p < q ? 0.5f : 0.0f)};
    default: {
      const float logm = logf(0.5f * (p + q));
      const float g = q > 0.0f ? 0.5f * (logq - logm) : 0.0f;
      return {0.5f * (p > 0.0f ? p * (logp - logm) : 0.0f) + (q > 0.0f ? q * g : 0.0f), g};
    }
  }
}

// {loss, acceptance, Σ q g} over the row (block-reduced).
template <class TS, class TT>
__device__ float3 row_terms(const TS* zq, const TT* zp, const DistillRowArgs& a, float thp, float thq, Norms n) {
  float loss = 0, acc = 0, qg = 0;
  for (int64_t j = threadIdx.x; j < a.V; j += blockDim.x) {
    const float zqj = to_f32(zq[j]), zpj = to_f32(zp[j]);
    const float aq = zqj * a.inv_t, logq = aq - n.lq, logp = zpj * a.inv_t - n.lp;
    const float q = expf(logq);
    const bool kept = zpj >= thp;
    const float p = kept ? expf(logp) : 0.0f;
    const float qf = zqj >= thq ? expf(aq - n.lqf) : 0.0f;
    const Element e = element(a.kind, q, logq, p, logp, kept);
    acc += fminf(p, qf);
    loss += e.loss;
    qg += q * e.g;
  }
  return make_float3(block_sum(loss), block_sum(acc), block_sum(qg));
}

// d may alias zq: each element is read before it is written.
template <class TS, class TT>
__device__ void row_grad(const TS* zq, const TT* zp, TS* d, const DistillRowArgs& a, float thp, Norms n, float qg) {
  for (int64_t j = threadIdx.x; j < a.V; j += blockDim.x) {
    const float zpj = to_f32(zp[j]);
    const float logq = to_f32(zq[j]) * a.inv_t - n.lq, logp = zpj * a.inv_t - n.lp;
    const float q = expf(logq);
    const bool kept = zpj >= thp;
    const float p = kept ? expf(logp) : 0.0f;
    const float g = a.kind == static_cast<int>(Divergence::ForwardKL)
                        ? a.inv_t * (q - p)
                        : a.inv_t * q * (element(a.kind, q, logq, p, logp, kept).g - qg);
    d[j] = from_f32<TS>(g);
  }
}

__device__ __forceinline__ float threshold_at(const float* t, int64_t r) { return t ? t[r] : -INFINITY; }

__device__ __forceinline__ Norms norms_of(const RowStats& s) {
  return {s.mq + logf(s.sq), s.mp + logf(s.sp), s.mq + logf(s.sqf)};
}

template <class TS, class TT>
__global__ void distill_forward_kernel(TS* zq, const TT* zp, DistillRowArgs a, float* losses, float* acceptance,
                                       bool write_grad) {
  for (int64_t r = blockIdx.x; r < a.N; r += gridDim.x) {
    TS* q = zq + r * a.ldq;
    const TT* p = zp + r * a.ldp;
    if (a.targets[r] == a.ignore_index) {
      if (threadIdx.x == 0) losses[r] = acceptance[r] = 0.0f;
      if (write_grad)
        for (int64_t j = threadIdx.x; j < a.V; j += blockDim.x) q[j] = from_f32<TS>(0.0f);
      continue;
    }
    const float thp = threshold_at(a.thp, r), thq = threshold_at(a.thq, r);
    const Norms n = norms_of(row_stats(q, p, a, thp, thq));
    const float3 t = row_terms(q, p, a, thp, thq, n);
    if (threadIdx.x == 0) {
      losses[r] = t.x;
      acceptance[r] = t.y;
    }
    if (write_grad) row_grad(q, p, q, a, thp, n, t.z);
  }
}

template <class TS, class TT>
__global__ void distill_stats_kernel(const TS* zq, const TT* zp, DistillRowArgs a, float* stats) {
  for (int64_t r = blockIdx.x; r < a.N; r += gridDim.x) {
    const RowStats s = row_stats(zq + r * a.ldq, zp + r * a.ldp, a, threshold_at(a.thp, r), threshold_at(a.thq, r));
    if (threadIdx.x != 0) continue;
    stats[r] = s.mq;
    stats[a.N + r] = s.sq;
    stats[2 * a.N + r] = s.mp;
    stats[3 * a.N + r] = s.sp;
    stats[4 * a.N + r] = s.sqf;
  }
}

template <class TS, class TT>
__global__ void distill_terms_kernel(const TS* zq, const TT* zp, DistillRowArgs a, const float* norms, float* terms) {
  for (int64_t r = blockIdx.x; r < a.N; r += gridDim.x) {
    float3 t = make_float3(0.0f, 0.0f, 0.0f);
    if (a.targets[r] != a.ignore_index)
      t = row_terms(zq + r * a.ldq, zp + r * a.ldp, a, threshold_at(a.thp, r), threshold_at(a.thq, r),
                    Norms{norms[r], norms[a.N + r], norms[2 * a.N + r]});
    if (threadIdx.x != 0) continue;
    terms[r] = t.x;
    terms[a.N + r] = t.y;
    terms[2 * a.N + r] = t.z;
  }
}

template <class TS, class TT>
__global__ void distill_grad_kernel(TS* zq, const TT* zp, DistillRowArgs a, const float* norms, const float* qg) {
  for (int64_t r = blockIdx.x; r < a.N; r += gridDim.x) {
    TS* q = zq + r * a.ldq;
    if (a.targets[r] == a.ignore_index) {
      for (int64_t j = threadIdx.x; j < a.V; j += blockDim.x) q[j] = from_f32<TS>(0.0f);
      continue;
    }
    row_grad(q, zp + r * a.ldp, q, a, threshold_at(a.thp, r), Norms{norms[r], norms[a.N + r], norms[2 * a.N + r]},
             qg[r]);
  }
}

// Logits as unsigned keys in the same order (negative floats flipped), and back.
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The largest key t with measure(t) >= target, measure non-increasing in t: bit by bit from the top.
template <class Measure>
__device__ uint32_t largest_key_with(Measure measure, double target) {
  uint32_t prefix = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t candidate = prefix | (1u << bit);
    if (measure(candidate) >= target) prefix = candidate;
  }
  return prefix;
}

template <class T>
__global__ void threshold_kernel(const T* logits, int64_t ld, int64_t N, int64_t V, float inv_t, int64_t top_k,
                                 double top_p, float* out) {
  const bool use_k = top_k > 0 && top_k < V, use_p = top_p < 1.0;
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* x = logits + r * ld;
    uint32_t floor_key = 0;  // below every logit
    if (use_k) {
      auto count_from = [&](uint32_t t) {
        double c = 0;
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) c += order_key(to_f32(x[j])) >= t ? 1.0 : 0.0;
        return block_sum(c);
      };
      floor_key = largest_key_with(count_from, static_cast<double>(top_k));
    }
    if (use_p) {
      float m = -INFINITY;
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
        const float v = to_f32(x[j]);
        if (order_key(v) >= floor_key) m = fmaxf(m, v);
      }
      m = block_reduce(m, MaxOp{}, -INFINITY);
      auto mass_from = [&](uint32_t t) {
        const uint32_t lo = t > floor_key ? t : floor_key;
        double s = 0;
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
          const float v = to_f32(x[j]);
          if (order_key(v) >= lo) s += expf((v - m) * inv_t);
        }
        return block_sum(s);
      };
      floor_key = largest_key_with(mass_from, top_p * mass_from(floor_key));
    }
    if (threadIdx.x == 0) out[r] = use_k || use_p ? key_value(floor_key) : -INFINITY;
  }
}

int row_threads(int64_t V) { return threads_for(V, 16, 512); }

const float* threshold_of(const OpContext& ctx, const char* name, const Tensor& t, int64_t rows) {
  if (!t.defined()) return nullptr;
  const float* p = ctx.contiguous_f32(name, t);
  require_numel(ctx.op(), name, t, rows, "one threshold per row");
  return p;
}

float* row_output(const OpContext& ctx, const char* name, const Tensor& t, int64_t numel) {
  float* p = ctx.contiguous_f32(name, t);
  require_numel(ctx.op(), name, t, numel, "one value per row (per statistic)");
  return p;
}

// The checked operands of one call.
struct Operands {
  Rows q, p;
  DistillRowArgs a{};
};

Operands operands(const OpContext& ctx, const Tensor& student, const Tensor& teacher, const Tensor* targets,
                  const DistillArgs& args) {
  Operands o;
  o.q = ctx.rows("student", student);
  o.p = ctx.rows("teacher", teacher);
  require_same_shape(ctx.op(), "teacher", teacher, "student", student);
  ANVIL_CHECK(args.temperature > 0 && std::isfinite(args.temperature), ctx.op(), ": temperature ", args.temperature,
              " must be finite and > 0");
  o.a.kind = static_cast<int>(args.kind);
  o.a.inv_t = 1.0f / args.temperature;
  o.a.ignore_index = args.ignore_index;
  o.a.N = o.q.rows;
  o.a.V = o.q.cols;
  o.a.ldq = o.q.ld;
  o.a.ldp = o.p.ld;
  if (targets) {
    o.a.targets = ctx.contiguous_i32("targets", *targets);
    ANVIL_CHECK(targets->numel() == o.q.rows, ctx.op(), ": targets ", targets->describe(), " but student ",
                student.describe(), " has ", o.q.rows, " rows — one target per row");
  }
  o.a.thp = threshold_of(ctx, "teacher_threshold", args.teacher_threshold, o.q.rows);
  o.a.thq = threshold_of(ctx, "student_threshold", args.student_threshold, o.q.rows);
  return o;
}

// Calls fn(TS{}, TT{}) for the student's and the teacher's element types.
template <class Fn>
void with_pair_types(const Operands& o, Fn&& fn) {
  with_float_type(o.q.dtype, [&](auto s) { with_float_type(o.p.dtype, [&](auto t) { fn(s, t); }); });
}

}  // namespace

void distill_filter_threshold(const Tensor& logits, float temperature, int64_t top_k, double top_p,
                              Tensor& threshold) {
  OpContext ctx("distill_filter_threshold", "logits", logits);
  const Rows z = ctx.rows("logits", logits);
  float* out = row_output(ctx, "threshold", threshold, z.rows);
  ANVIL_CHECK(temperature > 0 && std::isfinite(temperature), ctx.op(), ": temperature ", temperature,
              " must be finite and > 0");
  ANVIL_CHECK(top_k >= 0, ctx.op(), ": top_k ", top_k, " must be >= 0 (0 = off)");
  ANVIL_CHECK(top_p > 0 && top_p <= 1, ctx.op(), ": top_p ", top_p, " must lie in (0, 1] (1 = off)");
  if (z.rows == 0) return;
  with_float_type(z.dtype, [&](auto tag) {
    using T = decltype(tag);
    threshold_kernel<T><<<blocks_for(z.rows, 1), row_threads(z.cols), 0, ctx.stream()>>>(
        static_cast<const T*>(z.p), z.ld, z.rows, z.cols, 1.0f / temperature, top_k, top_p, out);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

void distill_forward(Tensor& student, const Tensor& teacher, const Tensor& targets, const DistillArgs& args,
                     Tensor& losses, Tensor& acceptance, bool write_grad) {
  OpContext ctx("distill_forward", "student", student);
  const Operands o = operands(ctx, student, teacher, &targets, args);
  float* pl = row_output(ctx, "losses", losses, o.q.rows);
  float* pa = row_output(ctx, "acceptance", acceptance, o.q.rows);
  ANVIL_CHECK(o.q.cols > 0 || o.q.rows == 0, ctx.op(), ": student ", student.describe(), " has an empty vocabulary");
  if (o.q.rows == 0) return;
  with_pair_types(o, [&](auto s, auto t) {
    using TS = decltype(s);
    using TT = decltype(t);
    distill_forward_kernel<TS, TT><<<blocks_for(o.q.rows, 1), row_threads(o.q.cols), 0, ctx.stream()>>>(
        static_cast<TS*>(o.q.p), static_cast<const TT*>(o.p.p), o.a, pl, pa, write_grad);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

void distill_shard_stats(const Tensor& student, const Tensor& teacher, const DistillArgs& args, Tensor& stats) {
  OpContext ctx("distill_shard_stats", "student", student);
  const Operands o = operands(ctx, student, teacher, nullptr, args);
  float* ps = row_output(ctx, "stats", stats, 5 * o.q.rows);
  ANVIL_CHECK(o.q.cols > 0 || o.q.rows == 0, ctx.op(), ": student ", student.describe(),
              " has an empty vocabulary shard");
  if (o.q.rows == 0) return;
  with_pair_types(o, [&](auto s, auto t) {
    using TS = decltype(s);
    using TT = decltype(t);
    distill_stats_kernel<TS, TT><<<blocks_for(o.q.rows, 1), row_threads(o.q.cols), 0, ctx.stream()>>>(
        static_cast<const TS*>(o.q.p), static_cast<const TT*>(o.p.p), o.a, ps);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

void distill_shard_terms(const Tensor& student, const Tensor& teacher, const Tensor& targets,
                         const DistillArgs& args, const Tensor& norms, Tensor& terms) {
  OpContext ctx("distill_shard_terms", "student", student);
  const Operands o = operands(ctx, student, teacher, &targets, args);
  const float* pn = row_output(ctx, "norms", norms, 3 * o.q.rows);
  float* pt = row_output(ctx, "terms", terms, 3 * o.q.rows);
  if (o.q.rows == 0) return;
  with_pair_types(o, [&](auto s, auto t) {
    using TS = decltype(s);
    using TT = decltype(t);
    distill_terms_kernel<TS, TT><<<blocks_for(o.q.rows, 1), row_threads(o.q.cols), 0, ctx.stream()>>>(
        static_cast<const TS*>(o.q.p), static_cast<const TT*>(o.p.p), o.a, pn, pt);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

void distill_shard_grad(Tensor& student, const Tensor& teacher, const Tensor& targets, const DistillArgs& args,
                        const Tensor& norms, const Tensor& qg) {
  OpContext ctx("distill_shard_grad", "student", student);
  const Operands o = operands(ctx, student, teacher, &targets, args);
  const float* pn = row_output(ctx, "norms", norms, 3 * o.q.rows);
  const float* pg = row_output(ctx, "qg", qg, o.q.rows);
  if (o.q.rows == 0 || o.q.cols == 0) return;
  with_pair_types(o, [&](auto s, auto t) {
    using TS = decltype(s);
    using TT = decltype(t);
    distill_grad_kernel<TS, TT><<<blocks_for(o.q.rows, 1), row_threads(o.q.cols), 0, ctx.stream()>>>(
        static_cast<TS*>(o.q.p), static_cast<const TT*>(o.p.p), o.a, pn, pg);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace anvil::kernels::cuda
