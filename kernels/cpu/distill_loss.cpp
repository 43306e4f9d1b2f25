// Distillation losses on the CPU (kernels/distill_loss.h): one row at a time, parallel over
// rows; the full-row op runs the three row passes (statistics, terms, gradient) back to back
// while the row is still in cache. Loops vectorise (vexp; one log per element for JSD only).
#include "kernels/distill_loss.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/common.h"

namespace anvil::kernels {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// One row of both operands and the row's filter thresholds.
struct RowIn {
  const float* zq;  // student logits
  const float* zp;  // teacher logits
  int64_t V;
  float inv_t, thp, thq;
};

struct RowStats {
  float mq, sq, mp, sp, sqf;
};
struct Norms {
  float lq, lp, lqf;  // log-normalisers of q, p, q_f in units of z / T
};
struct Terms {
  float loss, acc, qg;
};

RowStats row_stats(const RowIn& r) {
  float mq = -kInf, mp = -kInf;
#pragma omp simd reduction(max : mq, mp)
  for (int64_t j = 0; j < r.V; ++j) {
    mq = std::max(mq, r.zq[j] * r.inv_t);
    mp = std::max(mp, r.zp[j] >= r.thp ? r.zp[j] * r.inv_t : -kInf);
  }
  float sq = 0, sp = 0, sqf = 0;
#pragma omp simd reduction(+ : sq, sp, sqf)
  for (int64_t j = 0; j < r.V; ++j) {
    const float e = cpu::vexp(r.zq[j] * r.inv_t - mq);
    sq += e;
    sqf += r.zq[j] >= r.thq ? e : 0.0f;
    sp += r.zp[j] >= r.thp ? cpu::vexp(r.zp[j] * r.inv_t - mp) : 0.0f;  // masked: mp -inf never used
  }
  return {mq, sq, mp, sp, sqf};
}

// The loss term and g = dL/dq of one element, given q, p and their logs (p = 0 outside the kept set).
struct Element {
  float loss, g;
};
template <Divergence K>
inline Element element(float q, float logq, float p, float logp, bool kept) {
  if constexpr (K == Divergence::ForwardKL) {
    return {p > 0.0f ? p * (logp - logq) : 0.0f, 0.0f};  // g unused: the gradient is (q - p) / T
  } else if constexpr (K == Divergence::ReverseKL) {
    const float lp = kept ? logp : -kInf;  // infinite outside p's support (the spec refuses filters)
    return {q > 0.0f ? q * (logq - lp) : 0.0f, logq - lp};
  } else if constexpr (K == Divergence::TVD) {
    return {0.5f * std::fabs(p - q), p > q ? -0.5f : (p < q ? 0.5f : 0.0f)};
  } else {
    const float logm = std::log(0.5f * (p + q));
    const float g = q > 0.0f ? 0.5f * (logq - logm) : 0.0f;
    return {0.5f * (p > 0.0f ? p * (logp - logm) : 0.0f) + (q > 0.0f ? q * g : 0.0f), g};
  }
}

template <Divergence K>
Terms row_terms(const RowIn& r, const Norms& n) {
  float loss = 0, acc = 0, qg = 0;
#pragma omp simd reduction(+ : loss, acc, qg)
  for (int64_t j = 0; j < r.V; ++j) {
    const float aq = r.zq[j] * r.inv_t, logq = aq - n.lq, logp = r.zp[j] * r.inv_t - n.lp;
    const float q = cpu::vexp(logq);
    const bool kept = r.zp[j] >= r.thp;
    const float p = kept ? cpu::vexp(logp) : 0.0f;
    const float qf = r.zq[j] >= r.thq ? cpu::vexp(aq - n.lqf) : 0.0f;
    const Element e = element<K>(q, logq, p, logp, kept);
    acc += std::min(p, qf);
    loss += e.loss;
    qg += q * e.g;
  }
  return {loss, acc, qg};
}

// d may alias zq: each element is read before it is written.
template <Divergence K>
void row_grad(const RowIn& r, const Norms& n, float qg, float* d) {
#pragma omp simd
  for (int64_t j = 0; j < r.V; ++j) {
    const float logq = r.zq[j] * r.inv_t - n.lq, logp = r.zp[j] * r.inv_t - n.lp;
    const float q = cpu::vexp(logq);
    const bool kept = r.zp[j] >= r.thp;
    const float p = kept ? cpu::vexp(logp) : 0.0f;
    if constexpr (K == Divergence::ForwardKL) {
      d[j] = r.inv_t * (q - p);
    } else {
      d[j] = r.inv_t * q * (element<K>(q, logq, p, logp, kept).g - qg);
    }
  }
}

template <class Fn>
void with_divergence(Divergence k, Fn&& fn) {
  switch (k) {
    case Divergence::ForwardKL: return fn(std::integral_constant<Divergence, Divergence::ForwardKL>{});
    case Divergence::ReverseKL: return fn(std::integral_constant<Divergence, Divergence::ReverseKL>{});
    case Divergence::TVD: return fn(std::integral_constant<Divergence, Divergence::TVD>{});
    case Divergence::JSD: return fn(std::integral_constant<Divergence, Divergence::JSD>{});
  }
}

Norms norms_of(const RowStats& s) {
  return {s.mq + std::log(s.sq), s.mp + std::log(s.sp), s.mq + std::log(s.sqf)};
}

// The checked operands of one call.
struct Operands {
  cpu::Rows q, p;
  const int32_t* targets = nullptr;
  const float* thp = nullptr;
  const float* thq = nullptr;
  float inv_t = 1.0f;
  RowIn row(int64_t i) const {
    return {q.row(i), p.row(i), q.cols, inv_t, thp ? thp[i] : -kInf, thq ? thq[i] : -kInf};
  }
};

const float* threshold_of(const char* op, const char* name, const Tensor& t, int64_t rows) {
  if (!t.defined()) return nullptr;
  const float* p = cpu::contiguous_f32(op, name, t);
  cpu::require_numel(op, name, t, rows, "one threshold per row");
  return p;
}

Operands operands(const char* op, const Tensor& student, const Tensor& teacher, const Tensor* targets,
                  const DistillArgs& args) {
  Operands o;
  o.q = cpu::as_rows(op, "student", student);
  o.p = cpu::as_rows(op, "teacher", teacher);
  cpu::require_same_shape(op, "teacher", teacher, "student", student);
  ANVIL_CHECK(args.temperature > 0 && std::isfinite(args.temperature), op, ": temperature ", args.temperature,
              " must be finite and > 0");
  o.inv_t = 1.0f / args.temperature;
  if (targets) {
    o.targets = cpu::contiguous_i32(op, "targets", *targets);
    ANVIL_CHECK(targets->numel() == o.q.rows, op, ": targets ", targets->describe(), " but student ",
                student.describe(), " has ", o.q.rows, " rows — one target per row");
  }
  o.thp = threshold_of(op, "teacher_threshold", args.teacher_threshold, o.q.rows);
  o.thq = threshold_of(op, "student_threshold", args.student_threshold, o.q.rows);
  return o;
}

float* row_output(const char* op, const char* name, const Tensor& t, int64_t numel) {
  float* p = cpu::contiguous_f32(op, name, t);
  cpu::require_numel(op, name, t, numel, "one value per row (per statistic)");
  return p;
}

void zero_row(float* d, int64_t V) { std::fill(d, d + V, 0.0f); }

// The top-p threshold among the values >= `floor` of row z: the smallest value of the shortest
// descending prefix whose probability at temperature 1/inv_t reaches top_p. Sorts only as much
// of the row as the nucleus needs (a prefix doubling from 64), so a peaked row costs O(V).
float top_p_threshold(const float* z, int64_t V, float floor, float inv_t, double top_p) {
  std::vector<float> kept;
  kept.reserve(static_cast<size_t>(V));
  float m = -kInf;
  for (int64_t j = 0; j < V; ++j)
    if (z[j] >= floor) {
      kept.push_back(z[j]);
      m = std::max(m, z[j]);
    }
  if (kept.size() <= 1) return floor;
  double total = 0;
  for (float v : kept) total += cpu::vexp((v - m) * inv_t);
  size_t n = 0, sorted = 0;
  double before = 0;  // the mass ahead of kept[n], as generate's loop
  while (n < kept.size() && (n == 0 || before < top_p)) {
    if (n == sorted) {
      sorted = std::min(kept.size(), std::max<size_t>(64, 2 * sorted));
      std::partial_sort(kept.begin() + static_cast<std::ptrdiff_t>(n), kept.begin() + static_cast<std::ptrdiff_t>(sorted),
                        kept.end(), std::greater<float>());
    }
    before += cpu::vexp((kept[n] - m) * inv_t) / total;
    ++n;
  }
  return kept[n - 1];
}

}  // namespace

void distill_filter_threshold(const Tensor& logits, float temperature, int64_t top_k, double top_p,
                              Tensor& threshold) {
  ANVIL_DISPATCH_CUDA(logits, distill_filter_threshold, logits, temperature, top_k, top_p, threshold);
  constexpr const char* op = "distill_filter_threshold";
  const cpu::Rows z = cpu::as_rows(op, "logits", logits);
  float* out = row_output(op, "threshold", threshold, z.rows);
  ANVIL_CHECK(temperature > 0 && std::isfinite(temperature), op, ": temperature ", temperature,
              " must be finite and > 0");
  ANVIL_CHECK(top_k >= 0, op, ": top_k ", top_k, " must be >= 0 (0 = off)");
  ANVIL_CHECK(top_p > 0 && top_p <= 1, op, ": top_p ", top_p, " must lie in (0, 1] (1 = off)");
  const int64_t V = z.cols;
  const bool use_k = top_k > 0 && top_k < V, use_p = top_p < 1;
  cpu::parallel_rows(z.rows, V, [&](int64_t i) {
    const float* x = z.row(i);
    float th = -kInf;
    if (use_k) {
      std::vector<float> v(x, x + V);
      std::nth_element(v.begin(), v.begin() + (top_k - 1), v.end(), std::greater<float>());
      th = v[static_cast<size_t>(top_k - 1)];
    }
    if (use_p) th = top_p_threshold(x, V, th, 1.0f / temperature, top_p);
    out[i] = th;
  });
}

void distill_forward(Tensor& student, const Tensor& teacher, const Tensor& targets, const DistillArgs& args,
                     Tensor& losses, Tensor& acceptance, bool write_grad) {
  ANVIL_DISPATCH_CUDA(student, distill_forward, student, teacher, targets, args, losses, acceptance, write_grad);
  constexpr const char* op = "distill_forward";
  const Operands o = operands(op, student, teacher, &targets, args);
  float* pl = row_output(op, "losses", losses, o.q.rows);
  float* pa = row_output(op, "acceptance", acceptance, o.q.rows);
  ANVIL_CHECK(o.q.cols > 0 || o.q.rows == 0, op, ": student ", student.describe(), " has an empty vocabulary");
  with_divergence(args.kind, [&](auto kind) {
    constexpr Divergence K = decltype(kind)::value;
    cpu::parallel_rows(o.q.rows, o.q.cols, [&](int64_t i) {
      if (o.targets[i] == args.ignore_index) {
        pl[i] = pa[i] = 0.0f;
        if (write_grad) zero_row(o.q.row(i), o.q.cols);
        return;
      }
      const RowIn r = o.row(i);
      const Norms n = norms_of(row_stats(r));
      const Terms t = row_terms<K>(r, n);
      pl[i] = t.loss;
      pa[i] = t.acc;
      if (write_grad) row_grad<K>(r, n, t.qg, o.q.row(i));
    });
  });
}

void distill_shard_stats(const Tensor& student, const Tensor& teacher, const DistillArgs& args, Tensor& stats) {
  ANVIL_DISPATCH_CUDA(student, distill_shard_stats, student, teacher, args, stats);
  constexpr const char* op = "distill_shard_stats";
  const Operands o = operands(op, student, teacher, nullptr, args);
  float* ps = row_output(op, "stats", stats, 5 * o.q.rows);
  ANVIL_CHECK(o.q.cols > 0 || o.q.rows == 0, op, ": student ", student.describe(), " has an empty vocabulary shard");
  const int64_t N = o.q.rows;
  cpu::parallel_rows(N, o.q.cols, [&](int64_t i) {
    const RowStats s = row_stats(o.row(i));
    ps[i] = s.mq;
    ps[N + i] = s.sq;
    ps[2 * N + i] = s.mp;
    ps[3 * N + i] = s.sp;
    ps[4 * N + i] = s.sqf;
  });
}

void distill_shard_terms(const Tensor& student, const Tensor& teacher, const Tensor& targets,
                         const DistillArgs& args, const Tensor& norms, Tensor& terms) {
  ANVIL_DISPATCH_CUDA(student, distill_shard_terms, student, teacher, targets, args, norms, terms);
  constexpr const char* op = "distill_shard_terms";
  const Operands o = operands(op, student, teacher, &targets, args);
  const int64_t N = o.q.rows;
  const float* pn = row_output(op, "norms", norms, 3 * N);
  float* pt = row_output(op, "terms", terms, 3 * N);
  with_divergence(args.kind, [&](auto kind) {
    constexpr Divergence K = decltype(kind)::value;
    cpu::parallel_rows(N, o.q.cols, [&](int64_t i) {
      Terms t{0, 0, 0};
      if (o.targets[i] != args.ignore_index) t = row_terms<K>(o.row(i), Norms{pn[i], pn[N + i], pn[2 * N + i]});
      pt[i] = t.loss;
      pt[N + i] = t.acc;
      pt[2 * N + i] = t.qg;
    });
  });
}

void distill_shard_grad(Tensor& student, const Tensor& teacher, const Tensor& targets, const DistillArgs& args,
                        const Tensor& norms, const Tensor& qg) {
  ANVIL_DISPATCH_CUDA(student, distill_shard_grad, student, teacher, targets, args, norms, qg);
  constexpr const char* op = "distill_shard_grad";
  const Operands o = operands(op, student, teacher, &targets, args);
  const int64_t N = o.q.rows;
  const float* pn = row_output(op, "norms", norms, 3 * N);
  const float* pg = row_output(op, "qg", qg, N);
  with_divergence(args.kind, [&](auto kind) {
    constexpr Divergence K = decltype(kind)::value;
    cpu::parallel_rows(N, o.q.cols, [&](int64_t i) {
      if (o.targets[i] == args.ignore_index) return zero_row(o.q.row(i), o.q.cols);
      row_grad<K>(o.row(i), Norms{pn[i], pn[N + i], pn[2 * N + i]}, pg[i], o.q.row(i));
    });
  });
}

}  // namespace anvil::kernels
