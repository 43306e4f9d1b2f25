// Causal grouped-query attention on the CPU, FlashAttention-2 style: queries are
// processed in blocks of kBq rows against key blocks of kBk columns with an online
// softmax, so each thread holds O(kBq * kBk + kBq * D) floats, never O(T^2).
//
// Cost (causal, Tq = Tk = T, per batch and query head, ignoring the diagonal blocks):
//   forward  2 products (S = Q K^T, O = P V)               ~ 2 * T^2 * D FLOPs
//   backward 7 products (S and dP = dO V^T are recomputed in both the dK/dV pass and
//            the dQ pass, plus dV = P^T dO, dK = dS^T Q, dQ = dS K)   ~ 7 * T^2 * D FLOPs
// plus one exp per visible score (T^2 / 2) in the forward and two in the backward.
//
// Document boundaries (AttentionMask::segment_ids) only raise each query's lowest visible key
// to the first slot of its document, like the window does; without them that bound is 0 and
// the kernel runs exactly as before.
//
// Drafting groups (AttentionMask::group_ids) are one lookup per score inside the visible span
// (masked scores set to -inf before the softmax), and a (query block, key block) pair whose
// keys no query of the block can see is skipped whole: real queries reach only real keys up
// to their slot, mask queries only real keys up to their anchor and masks of their anchors.
// Without group_ids none of this runs.
//
// Determinism: every output element is produced by exactly one work item in a fixed
// order (no atomics, no reductions across threads), so results are bitwise identical
// for any thread count and schedule.
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "kernels/backend.h"
#include "kernels/shape_checks.h"

namespace anvil::kernels {

namespace {

constexpr int64_t kBq = 64;  // query rows per block
constexpr int64_t kBk = 64;  // key columns per block (the score tile is kBq x kBk)

#if defined(__AVX512F__)
#define ANVIL_ATTN_VBYTES 64
constexpr int kR = 4;  // rows per register tile: 4 x 4 zmm accumulators
#elif defined(__AVX__)
#define ANVIL_ATTN_VBYTES 32
constexpr int kR = 2;  // 2 x 4 ymm accumulators fit the 16 AVX2 registers
#else
#define ANVIL_ATTN_VBYTES 16
constexpr int kR = 2;  // SSE: 2 x 4 xmm accumulators
#endif
typedef float vf __attribute__((vector_size(ANVIL_ATTN_VBYTES)));
typedef int32_t vi __attribute__((vector_size(ANVIL_ATTN_VBYTES)));
constexpr int kVec = ANVIL_ATTN_VBYTES / 4;  // floats per vector
constexpr int kNV = 4;                       // vectors per register tile row
constexpr int kRowVecs = kBk / kVec;         // vectors in one score row
static_assert(kBk % kVec == 0, "score rows must be whole vectors");

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline float hsum(vf v) { float s = 0; for (int i = 0; i < kVec; ++i) s += v[i]; return s; }
inline float hmax(vf v) { float s = v[0]; for (int i = 1; i < kVec; ++i) s = std::max(s, v[i]); return s; }

// expf for a vector (Cephes polynomial, ~2 ulp); inputs below -87 (and -inf) give 0.
inline vf vexp(vf x) {
  const vi under = x < -87.0f;  // lanes that underflow to 0
  x = x < -87.0f ? vf{} - 87.0f : x;
  x = x > 88.0f ? vf{} + 88.0f : x;
  const vf magic = vf{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (x * 1.44269504088896341f + magic) - magic;
  const vf r = x - n * 0.693359375f - n * -2.12194440e-4f;
  vf y = vf{} + 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &e, sizeof scale);
  y = y * scale;
  return under ? vf{} : y;
}

// C[r][0 : NV*kVec] (+)= sum_k a(r, k) * B[k][0 : NV*kVec] for r < R, where
// a(r, k) = A[r * lda + k], or A[k * lda + r] when TA (A stored transposed).
template <int R, int NV, bool TA, bool ACC>
inline void micro(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                  int64_t ldc) {
  vf acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      if constexpr (ACC) acc[r][v] = load(C + r * ldc + v * kVec);
      else acc[r][v] = vf{};
    }
  for (int64_t k = 0; k < K; ++k) {
    vf bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load(B + k * ldb + v * kVec);
    for (int r = 0; r < R; ++r) {
      const float a = TA ? A[k * lda + r] : A[r * lda + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * bv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) store(C + r * ldc + v * kVec, acc[r][v]);
}

template <int R, bool TA, bool ACC>
inline void micro_nv(int nv, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                     int64_t ldc) {
  switch (nv) {
    case 4: micro<R, 4, TA, ACC>(K, A, lda, B, ldb, C, ldc); break;
    case 3: micro<R, 3, TA, ACC>(K, A, lda, B, ldb, C, ldc); break;
    case 2: micro<R, 2, TA, ACC>(K, A, lda, B, ldb, C, ldc); break;
    default: micro<R, 1, TA, ACC>(K, A, lda, B, ldb, C, ldc); break;
  }
}

// C[M, N] (+)= op(A)[M, K] * B[K, N], all row-major; N must be a multiple of kVec.
// op(A) = A ([M, K], lda) or, when TA, A^T with A stored [K, M] (lda).
template <bool TA, bool ACC>
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
          int64_t ldc) {
  for (int64_t n0 = 0; n0 < N; n0 += kNV * kVec) {
    const int nv = static_cast<int>(std::min<int64_t>(kNV, (N - n0) / kVec));
    int64_t r = 0;
    for (; r + kR <= M; r += kR)
      micro_nv<kR, TA, ACC>(nv, K, TA ? A + r : A + r * lda, lda, B + n0, ldb, C + r * ldc + n0, ldc);
    for (; r < M; ++r)
      micro_nv<1, TA, ACC>(nv, K, TA ? A + r : A + r * lda, lda, B + n0, ldb, C + r * ldc + n0, ldc);
  }
}

// 64-byte aligned per-thread scratch.
struct Scratch {
  explicit Scratch(size_t n) : p(static_cast<float*>(::operator new[](n * sizeof(float), std::align_val_t(64)))) {}
  ~Scratch() { ::operator delete[](p, std::align_val_t(64)); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* p;
};

// A [B, T, H, D] f32 view: base pointer and element strides (last dim contiguous).
struct View {
  float* p;
  int64_t sb, st, sh;
  float* row(int64_t b, int64_t t, int64_t h) const { return p + b * sb + t * st + h * sh; }
};
View view_of(const Tensor& t) { return {t.data<float>(), t.stride(0), t.stride(1), t.stride(2)}; }

// Document boundaries per key slot of a [B, Tk] problem: the first slot of the slot's document
// and one past its last.
struct Documents {
  std::vector<int64_t> start, end;
};

int64_t blocks(int64_t n, int64_t b) { return (n + b - 1) / b; }

// What a block of query or key slots of one row holds in drafting groups (group_ids), enough to
// tell that no query of a query block sees any key of a key block.
struct GroupSummary {
  int64_t real_reach = -1;  // queries: the highest real key slot any of them sees (-1: none)
  int64_t real_first = std::numeric_limits<int64_t>::max();  // keys: the first real key slot
  int64_t anchor_lo = std::numeric_limits<int64_t>::max(), anchor_hi = -1;  // masks' anchors
};

// Per-block summaries of group_ids [B, Tk] for the key blocks and query blocks of a problem.
struct Groups {
  const int32_t* ids = nullptr;        // [B, Tk]
  int64_t nqb = 0, nkb = 0;
  std::vector<GroupSummary> q, k;      // [B, nqb], [B, nkb]
};

// The checked problem (kernels/shape_checks.h), the head dim padded to a kVec multiple,
// with document boundaries where each key slot's document starts and ends, and with drafting
// groups their ids and block summaries.
struct Dims : AttentionDims {
  int64_t Dp = 0;
  const int64_t* doc_start = nullptr;  // [B, Tk], or null without documents
  const int64_t* doc_end = nullptr;    // [B, Tk]
  const Groups* groups = nullptr;      // null without group_ids
  // The first key slot of the document holding key slot p of row b (0 without documents).
  int64_t doc_begin(int64_t b, int64_t p) const { return doc_start ? doc_start[b * Tk + p] : 0; }
  // Whether some query of query block qb may see some key of key block kb in row b by the
  // group rule (always true without groups; causality and window are checked elsewhere).
  bool groups_may_meet(int64_t b, int64_t qb, int64_t kb) const {
    if (!groups) return true;
    const GroupSummary& qs = groups->q[static_cast<size_t>(b * groups->nqb + qb)];
    const GroupSummary& ks = groups->k[static_cast<size_t>(b * groups->nkb + kb)];
    return ks.real_first <= qs.real_reach ||
           std::max(qs.anchor_lo, ks.anchor_lo) <= std::min(qs.anchor_hi, ks.anchor_hi);
  }
};

// Copies rows [t0, t0 + n) of head h into dst [n, Dp] times `mul`, zero-padding columns.
void copy_rows(const View& src, int64_t b, int64_t t0, int64_t n, int64_t h, const Dims& d, float mul, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const float* s = src.row(b, t0 + i, h);
    float* o = dst + i * d.Dp;
    for (int64_t c = 0; c < d.D; ++c) o[c] = mul * s[c];
    for (int64_t c = d.D; c < d.Dp; ++c) o[c] = 0.0f;
  }
}

// Transposes rows [t0, t0 + n) of head h into dst [D, kBk], zero-padding columns >= n.
void copy_transposed(const View& src, int64_t b, int64_t t0, int64_t n, int64_t h, const Dims& d, float* dst) {
  for (int64_t j = 0; j < n; ++j) {
    const float* s = src.row(b, t0 + j, h);
    for (int64_t c = 0; c < d.D; ++c) dst[c * kBk + j] = s[c];
  }
  for (int64_t c = 0; c < d.D; ++c)
    for (int64_t j = n; j < kBk; ++j) dst[c * kBk + j] = 0.0f;
}

// The columns [lo, hi) of key block [k0, k0 + kn) that query q of row b sees: keys at
// positions p - window < j <= p for its position p = q_offset + q (no lower bound when
// window = 0), and not before the first slot of its document.
struct Span {
  int64_t lo, hi;
  bool empty() const { return hi <= lo; }
};
inline Span visible(const Dims& d, int64_t b, int64_t q, int64_t k0, int64_t kn) {
  const int64_t p = d.q_offset + q;
  int64_t lo = d.window > 0 ? std::clamp<int64_t>(p - d.window + 1 - k0, 0, kn) : 0;
  if (d.doc_start) lo = std::max(lo, std::clamp<int64_t>(d.doc_begin(b, p) - k0, 0, kn));
  return {lo, std::clamp<int64_t>(p + 1 - k0, 0, kn)};
}

// The first key, rounded down to a block start, that any of queries [q0, ...) of row b can
// see (document starts never decrease along a row, so query q0's bounds the block's).
inline int64_t first_key_block(const Dims& d, int64_t b, int64_t q0) {
  int64_t first = d.window > 0 ? std::max<int64_t>(0, d.q_offset + q0 - d.window + 1) : 0;
  if (d.doc_start) first = std::max(first, d.doc_begin(b, d.q_offset + q0));
  return first / kBk * kBk;
}

// Sets the columns of score row s outside `span` to -inf.
inline void mask_row(float* s, Span span) {
  for (int64_t j = 0; j < span.lo; ++j) s[j] = -std::numeric_limits<float>::infinity();
  for (int64_t j = std::max(span.hi, span.lo); j < kBk; ++j) s[j] = -std::numeric_limits<float>::infinity();
}

// Sets the columns of span in score row s that query q of row b may not see by the group rule
// to -inf (kernels/attention.h); returns whether any column of the span stays visible.
inline bool mask_groups(const Dims& d, int64_t b, int64_t q, int64_t k0, Span span, float* s) {
  const int32_t* g = d.groups->ids + b * d.Tk;
  const int32_t gq = g[d.q_offset + q];
  bool any = false;
  for (int64_t j = span.lo; j < span.hi; ++j) {
    const int32_t gj = g[k0 + j];
    const bool sees = gj < 0 ? (gq < 0 || k0 + j <= gq) : gj == gq;
    if (sees) any = true;
    else s[j] = -std::numeric_limits<float>::infinity();
  }
  return any;
}

// Masks score row s outside `span`, then replaces s by exp(s - sub).
inline vf exp_row(float* s, Span span, float sub) {
  mask_row(s, span);
  vf sum{};
  for (int v = 0; v < kRowVecs; ++v) {
    const vf p = vexp(load(s + v * kVec) - sub);
    store(s + v * kVec, p);
    sum += p;
  }
  return sum;
}

void check_cpu(const Tensor& t, const char* op, const char* name) {
  if (t.device().is_cpu()) return;
#ifdef ANVIL_WITH_CUDA
  // A CUDA q went to the CUDA backend, so q is on the CPU here.
  ANVIL_FAIL(op, ": ", name, " is ", t.describe(), " but q is on the CPU — every tensor must be on one device",
             " (move them with .to(Device))");
#else
  ANVIL_FAIL(op, ": ", name, " is ", t.describe(), " but the CUDA backend is not built for ", op,
             " — build where nvcc is installed, or run it on CPU tensors");
#endif
}

void check_bthd(const Tensor& t, const char* op, const char* name) {
  ANVIL_CHECK(t.defined(), op, ": ", name, " is undefined");
  check_cpu(t, op, name);
  ANVIL_CHECK(t.dim() == 4, op, ": ", name, " must be [B, T, H, D], got ", t.describe());
  ANVIL_CHECK(t.dtype() == DType::F32, op, ": ", name, " must be f32, got ", t.describe());
  ANVIL_CHECK(t.stride(3) == 1 || t.size(3) <= 1, op, ": the last dim of ", name, " ", t.describe(),
              " must be contiguous (stride 1), got stride ", t.stride(3));
}

// Allocates an undefined output with `shape`, otherwise checks it.
void prepare_output(Tensor& t, const Shape& shape, const char* op, const char* name) {
  if (!t.defined()) t = Tensor::empty(shape);
  check_bthd(t, op, name);
  ANVIL_CHECK(t.shape() == shape, op, ": ", name, " ", t.describe(), " must have shape ", shape_str(shape));
}

// For each key slot of segment_ids [B, Tk], where its document starts and ends; throws unless
// the ids are i32 [B, Tk] and non-decreasing along each row (documents are contiguous runs).
Documents documents_of(const Tensor& segment_ids, const AttentionDims& d, const char* op) {
  check_cpu(segment_ids, op, "segment_ids");
  ANVIL_CHECK(segment_ids.dtype() == DType::I32 && segment_ids.is_contiguous() &&
                  segment_ids.shape() == Shape({d.B, d.Tk}),
              op, ": segment_ids must be contiguous i32 [B, Tk] = ", shape_str({d.B, d.Tk}), ", got ",
              segment_ids.describe(), " — one document id per key slot (models/step_context.h builds them)");
  const int32_t* seg = segment_ids.data<int32_t>();
  Documents docs{std::vector<int64_t>(static_cast<size_t>(d.B * d.Tk)),
                 std::vector<int64_t>(static_cast<size_t>(d.B * d.Tk))};
  for (int64_t b = 0; b < d.B; ++b) {
    int64_t start = 0;
    for (int64_t j = 0; j < d.Tk; ++j) {
      const int64_t i = b * d.Tk + j;
      if (j > 0 && seg[i] != seg[i - 1]) {
        ANVIL_CHECK(seg[i] > seg[i - 1], op, ": segment_ids of row ", b, " decrease at slot ", j, " (", seg[i - 1],
                    " then ", seg[i], ") — documents must be contiguous runs with non-decreasing ids");
        start = j;
      }
      docs.start[static_cast<size_t>(i)] = start;
    }
    int64_t end = d.Tk;
    for (int64_t j = d.Tk - 1; j >= 0; --j) {
      const int64_t i = b * d.Tk + j;
      docs.end[static_cast<size_t>(i)] = end;
      if (docs.start[static_cast<size_t>(i)] == j) end = j;
    }
  }
  return docs;
}

// Checks group_ids [B, Tk] and summarises them per query block and key block.
Groups groups_of(const Tensor& group_ids, const AttentionDims& d, const char* op) {
  check_cpu(group_ids, op, "group_ids");
  check_group_ids(group_ids, d.B, d.Tk, op);
  Groups g{group_ids.data<int32_t>(), blocks(d.Tq, kBq), blocks(d.Tk, kBk), {}, {}};
  g.q.resize(static_cast<size_t>(d.B * g.nqb));
  g.k.resize(static_cast<size_t>(d.B * g.nkb));
  auto add_anchor = [](GroupSummary& s, int64_t a) {
    s.anchor_lo = std::min(s.anchor_lo, a);
    s.anchor_hi = std::max(s.anchor_hi, a);
  };
  for (int64_t b = 0; b < d.B; ++b) {
    const int32_t* row = g.ids + b * d.Tk;
    for (int64_t i = 0; i < d.Tq; ++i) {
      const int64_t p = d.q_offset + i;
      GroupSummary& s = g.q[static_cast<size_t>(b * g.nqb + i / kBq)];
      s.real_reach = std::max<int64_t>(s.real_reach, row[p] < 0 ? p : row[p]);
      if (row[p] >= 0) add_anchor(s, row[p]);
    }
    for (int64_t j = 0; j < d.Tk; ++j) {
      GroupSummary& s = g.k[static_cast<size_t>(b * g.nkb + j / kBk)];
      if (row[j] < 0) s.real_first = std::min(s.real_first, j);
      else add_anchor(s, row[j]);
    }
  }
  return g;
}

Dims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int64_t q_offset,
                  const AttentionMask& mask, Documents& docs, Groups& groups, const char* op) {
  check_bthd(q, op, "q");
  check_bthd(k, op, "k");
  check_bthd(v, op, "v");
  const AttentionDims a = attention_dims(op, q, k, v, scale, q_offset, mask.window);
  Dims d{a, (a.D + kVec - 1) / kVec * kVec};
  if (mask.segment_ids.defined()) {
    docs = documents_of(mask.segment_ids, a, op);
    d.doc_start = docs.start.data();
    d.doc_end = docs.end.data();
  }
  if (mask.group_ids.defined()) {
    groups = groups_of(mask.group_ids, a, op);
    d.groups = &groups;
  }
  return d;
}

void check_lse(const Tensor& lse, const Dims& d, const char* op) {
  check_cpu(lse, op, "lse");
  ANVIL_CHECK(lse.dtype() == DType::F32 && lse.is_contiguous() && lse.shape() == Shape({d.B, d.Hq, d.Tq}), op,
              ": lse must be contiguous f32 [B, Hq, Tq] = ", shape_str({d.B, d.Hq, d.Tq}), ", got ", lse.describe());
}

}  // namespace

void check_group_ids(const Tensor& group_ids, int64_t B, int64_t Tk, const char* where) {
  ANVIL_CHECK(group_ids.device().is_cpu() && group_ids.dtype() == DType::I32 && group_ids.is_contiguous() &&
                  group_ids.shape() == Shape({B, Tk}),
              where, ": group_ids must be contiguous i32 [B, Tk] = ", shape_str({B, Tk}), " on the CPU, got ",
              group_ids.describe(), " — one entry per key slot: -1 for a real token, the anchor's slot for a mask");
  const int32_t* g = group_ids.data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < Tk; ++j) {
      const int64_t a = g[b * Tk + j];
      ANVIL_CHECK(a >= -1 && a < Tk, where, ": group_ids of row ", b, " slot ", j, " is ", a, ", outside [-1, ", Tk,
                  ") — use -1 for a real token and the slot of its anchor (a real token of the row) for a mask");
      if (a < 0) continue;
      ANVIL_CHECK(a < j, where, ": group_ids of row ", b, " slot ", j, " names anchor slot ", a,
                  ", which is not before the mask — pack each anchor's masks after it");
      ANVIL_CHECK(g[b * Tk + a] == -1, where, ": group_ids of row ", b, " slot ", j, " names anchor slot ", a,
                  ", which is itself a mask (group id ", g[b * Tk + a], ") — an anchor must be a real token (-1)");
    }
}

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int64_t q_offset,
                       Tensor& out, Tensor& lse, int64_t window) {
  attention_forward(q, k, v, scale, q_offset, out, lse, AttentionMask{window, Tensor(), Tensor()});
}

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int64_t q_offset,
                       Tensor& out, Tensor& lse, const AttentionMask& mask) {
  ANVIL_DISPATCH_CUDA(q, attention_forward, q, k, v, scale, q_offset, out, lse, mask);
  const char* op = "attention_forward";
  Documents docs;
  Groups groups;
  const Dims d = check_inputs(q, k, v, scale, q_offset, mask, docs, groups, op);
  prepare_output(out, q.shape(), op, "out");
  if (!lse.defined()) lse = Tensor::empty({d.B, d.Hq, d.Tq});
  check_lse(lse, d, op);
  if (d.B == 0 || d.Tq == 0 || d.Hq == 0 || d.D == 0) return;

  const View Q = view_of(q), K = view_of(k), V = view_of(v), O = view_of(out);
  float* L = lse.data<float>();
  const int64_t nqb = blocks(d.Tq, kBq), items = d.B * d.Hq * nqb;
#pragma omp parallel if (items > 1)
  {
    Scratch buf(static_cast<size_t>(3 * kBq * d.Dp + d.D * kBk + kBk * d.Dp + kBq * kBk + 2 * kBq));
    float* Qs = buf.p;                  // [kBq, Dp] scale * q
    float* Acc = Qs + kBq * d.Dp;       // [kBq, Dp] unnormalised output
    float* Vb = Acc + kBq * d.Dp;       // [kBk, Dp]
    float* Kt = Vb + kBk * d.Dp;        // [D, kBk]
    float* S = Kt + d.D * kBk;          // [kBq, kBk] scores, then probabilities
    float* m = S + kBq * kBk;           // running max per row
    float* l = m + kBq;                 // running sum per row
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < items; ++w) {
      const int64_t qb = nqb - 1 - w % nqb, bh = w / nqb, b = bh / d.Hq, h = bh % d.Hq, kvh = h / d.group;
      const int64_t q0 = qb * kBq, qn = std::min(kBq, d.Tq - q0);
      const int64_t limit = std::min(d.Tk, d.q_offset + q0 + qn);
      copy_rows(Q, b, q0, qn, h, d, d.scale, Qs);
      std::fill(Acc, Acc + qn * d.Dp, 0.0f);
      std::fill(m, m + qn, -std::numeric_limits<float>::infinity());
      std::fill(l, l + qn, 0.0f);
      for (int64_t k0 = first_key_block(d, b, q0); k0 < limit; k0 += kBk) {
        if (!d.groups_may_meet(b, qb, k0 / kBk)) continue;
        const int64_t kn = std::min(kBk, limit - k0);
        copy_transposed(K, b, k0, kn, kvh, d, Kt);
        copy_rows(V, b, k0, kn, kvh, d, 1.0f, Vb);
        gemm<false, false>(qn, kBk, d.D, Qs, d.Dp, Kt, kBk, S, kBk);
        for (int64_t i = 0; i < qn; ++i) {
          float* s = S + i * kBk;
          const Span span = visible(d, b, q0 + i, k0, kn);
          if (span.empty() || (d.groups && !mask_groups(d, b, q0 + i, k0, span, s))) {
            std::fill(s, s + kBk, 0.0f);
            continue;
          }
          mask_row(s, span);
          vf mx = load(s);
          for (int vv = 1; vv < kRowVecs; ++vv) mx = mx > load(s + vv * kVec) ? mx : load(s + vv * kVec);
          const float m_new = std::max(m[i], hmax(mx));
          const float alpha = std::exp(m[i] - m_new);  // 0 on the first block (m = -inf)
          l[i] = l[i] * alpha + hsum(exp_row(s, span, m_new));
          m[i] = m_new;
          if (alpha != 1.0f) {
            float* a = Acc + i * d.Dp;
            for (int64_t c = 0; c < d.Dp; ++c) a[c] *= alpha;
          }
        }
        gemm<false, true>(qn, d.Dp, kn, S, kBk, Vb, d.Dp, Acc, d.Dp);
      }
      for (int64_t i = 0; i < qn; ++i) {
        float* o = O.row(b, q0 + i, h);
        const float inv = 1.0f / l[i];
        const float* a = Acc + i * d.Dp;
        for (int64_t c = 0; c < d.D; ++c) o[c] = a[c] * inv;
        L[(b * d.Hq + h) * d.Tq + q0 + i] = m[i] + std::log(l[i]);
      }
    }
  }
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, float scale, int64_t q_offset, Tensor& dq, Tensor& dk, Tensor& dv,
                        int64_t window) {
  attention_backward(dout, q, k, v, out, lse, scale, q_offset, dq, dk, dv, AttentionMask{window, Tensor(), Tensor()});
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, float scale, int64_t q_offset, Tensor& dq, Tensor& dk, Tensor& dv,
                        const AttentionMask& mask) {
  ANVIL_DISPATCH_CUDA(q, attention_backward, dout, q, k, v, out, lse, scale, q_offset, dq, dk, dv, mask);
  const char* op = "attention_backward";
  Documents docs;
  Groups groups;
  const Dims d = check_inputs(q, k, v, scale, q_offset, mask, docs, groups, op);
  check_bthd(dout, op, "dout");
  check_bthd(out, op, "out");
  ANVIL_CHECK(dout.shape() == q.shape() && out.shape() == q.shape(), op, ": dout ", dout.describe(), " and out ",
              out.describe(), " must have the shape of q ", q.describe());
  check_lse(lse, d, op);
  prepare_output(dq, q.shape(), op, "dq");
  prepare_output(dk, k.shape(), op, "dk");
  prepare_output(dv, v.shape(), op, "dv");
  if (d.B == 0 || d.D == 0) return;  // nothing to write (Hq = 0 still zeroes dk, dv below)

  const View Q = view_of(q), K = view_of(k), V = view_of(v), O = view_of(out), dO = view_of(dout);
  const View dQ = view_of(dq), dK = view_of(dk), dV = view_of(dv);
  const float* L = lse.data<float>();
  const int64_t nqb = blocks(d.Tq, kBq), nkb = blocks(d.Tk, kBk);
  const int64_t rows = d.B * d.Hq * d.Tq;

  // Di = rowsum(dout * out), the softmax backward's per-row correction, in [B, Hq, Tq].
  std::vector<float> Di(static_cast<size_t>(rows));
#pragma omp parallel for schedule(static) if (rows * d.D >= (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = r % d.Tq, h = (r / d.Tq) % d.Hq, b = r / (d.Tq * d.Hq);
    const float *g = dO.row(b, t, h), *o = O.row(b, t, h);
    double s = 0;
    for (int64_t c = 0; c < d.D; ++c) s += static_cast<double>(g[c]) * o[c];
    Di[static_cast<size_t>(r)] = static_cast<float>(s);
  }

  // Recomputes P = exp(scale q k^T - lse) (masked) in S and dS = P * (dO v^T - Di) in dP
  // for query rows [q0, q0 + qn) of head h against key block [k0, k0 + kn).
  auto scores = [&](int64_t b, int64_t h, int64_t q0, int64_t qn, int64_t k0, int64_t kn, const float* Qs,
                    const float* dOb, const float* Kt, const float* Vt, float* S, float* dP) {
    gemm<false, false>(qn, kBk, d.D, Qs, d.Dp, Kt, kBk, S, kBk);
    gemm<false, false>(qn, kBk, d.D, dOb, d.Dp, Vt, kBk, dP, kBk);
    const float* lrow = L + (b * d.Hq + h) * d.Tq + q0;
    const float* drow = Di.data() + (b * d.Hq + h) * d.Tq + q0;
    for (int64_t i = 0; i < qn; ++i) {
      float* s = S + i * kBk;
      float* g = dP + i * kBk;
      const Span span = visible(d, b, q0 + i, k0, kn);
      if (d.groups) mask_groups(d, b, q0 + i, k0, span, s);  // -inf scores give exp 0 below
      exp_row(s, span, lrow[i]);
      for (int vv = 0; vv < kRowVecs; ++vv)
        store(g + vv * kVec, load(s + vv * kVec) * (load(g + vv * kVec) - drow[i]));
    }
  };

  // Pass 1: dK and dV, one work item per (batch, KV head, key block); it loops over
  // every query head of its group and every query block that can see its keys.
  const int64_t kv_items = d.B * d.Hkv * nkb;
#pragma omp parallel if (kv_items > 1)
  {
    Scratch buf(static_cast<size_t>(2 * d.D * kBk + 2 * kBq * d.Dp + 2 * kBk * d.Dp + 2 * kBq * kBk));
    float* Kt = buf.p;                  // [D, kBk]
    float* Vt = Kt + d.D * kBk;         // [D, kBk]
    float* Qs = Vt + d.D * kBk;         // [kBq, Dp] scale * q
    float* dOb = Qs + kBq * d.Dp;       // [kBq, Dp]
    float* dKa = dOb + kBq * d.Dp;      // [kBk, Dp]
    float* dVa = dKa + kBk * d.Dp;      // [kBk, Dp]
    float* S = dVa + kBk * d.Dp;        // [kBq, kBk]
    float* dP = S + kBq * kBk;          // [kBq, kBk]
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < kv_items; ++w) {
      const int64_t kb = w % nkb, bh = w / nkb, b = bh / d.Hkv, kvh = bh % d.Hkv;
      const int64_t k0 = kb * kBk, kn = std::min(kBk, d.Tk - k0);
      copy_transposed(K, b, k0, kn, kvh, d, Kt);
      copy_transposed(V, b, k0, kn, kvh, d, Vt);
      std::fill(dKa, dKa + kn * d.Dp, 0.0f);
      std::fill(dVa, dVa + kn * d.Dp, 0.0f);
      const int64_t first_q = std::max<int64_t>(0, k0 - d.q_offset);  // first query that sees key k0
      // One past the last query that sees key k0 + kn - 1 (its window's oldest key).
      int64_t end_q = d.window > 0 ? std::clamp<int64_t>(k0 + kn - 1 + d.window - d.q_offset, 0, d.Tq) : d.Tq;
      // Nor past the document of the block's last key (later queries belong to other documents).
      if (d.doc_end) end_q = std::min(end_q, std::max<int64_t>(0, d.doc_end[b * d.Tk + k0 + kn - 1] - d.q_offset));
      for (int64_t h = kvh * d.group; h < (kvh + 1) * d.group; ++h)
        for (int64_t q0 = first_q / kBq * kBq; q0 < end_q; q0 += kBq) {
          if (!d.groups_may_meet(b, q0 / kBq, kb)) continue;
          const int64_t qn = std::min(kBq, d.Tq - q0);
          copy_rows(Q, b, q0, qn, h, d, d.scale, Qs);
          copy_rows(dO, b, q0, qn, h, d, 1.0f, dOb);
          scores(b, h, q0, qn, k0, kn, Qs, dOb, Kt, Vt, S, dP);
          gemm<true, true>(kn, d.Dp, qn, S, kBk, dOb, d.Dp, dVa, d.Dp);   // dV += P^T dO
          gemm<true, true>(kn, d.Dp, qn, dP, kBk, Qs, d.Dp, dKa, d.Dp);   // dK += dS^T (scale q)
        }
      for (int64_t j = 0; j < kn; ++j) {
        std::memcpy(dK.row(b, k0 + j, kvh), dKa + j * d.Dp, static_cast<size_t>(d.D) * sizeof(float));
        std::memcpy(dV.row(b, k0 + j, kvh), dVa + j * d.Dp, static_cast<size_t>(d.D) * sizeof(float));
      }
    }
  }

  // Pass 2: dQ, one work item per (batch, query head, query block).
  const int64_t q_items = d.B * d.Hq * nqb;
#pragma omp parallel if (q_items > 1)
  {
    Scratch buf(static_cast<size_t>(2 * d.D * kBk + 3 * kBq * d.Dp + kBk * d.Dp + 2 * kBq * kBk));
    float* Kt = buf.p;                  // [D, kBk]
    float* Vt = Kt + d.D * kBk;         // [D, kBk]
    float* Qs = Vt + d.D * kBk;         // [kBq, Dp] scale * q
    float* dOb = Qs + kBq * d.Dp;       // [kBq, Dp]
    float* dQa = dOb + kBq * d.Dp;      // [kBq, Dp]
    float* Kb = dQa + kBq * d.Dp;       // [kBk, Dp]
    float* S = Kb + kBk * d.Dp;         // [kBq, kBk]
    float* dP = S + kBq * kBk;          // [kBq, kBk]
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < q_items; ++w) {
      const int64_t qb = nqb - 1 - w % nqb, bh = w / nqb, b = bh / d.Hq, h = bh % d.Hq, kvh = h / d.group;
      const int64_t q0 = qb * kBq, qn = std::min(kBq, d.Tq - q0);
      const int64_t limit = std::min(d.Tk, d.q_offset + q0 + qn);
      copy_rows(Q, b, q0, qn, h, d, d.scale, Qs);
      copy_rows(dO, b, q0, qn, h, d, 1.0f, dOb);
      std::fill(dQa, dQa + qn * d.Dp, 0.0f);
      for (int64_t k0 = first_key_block(d, b, q0); k0 < limit; k0 += kBk) {
        if (!d.groups_may_meet(b, qb, k0 / kBk)) continue;
        const int64_t kn = std::min(kBk, limit - k0);
        copy_transposed(K, b, k0, kn, kvh, d, Kt);
        copy_transposed(V, b, k0, kn, kvh, d, Vt);
        copy_rows(K, b, k0, kn, kvh, d, 1.0f, Kb);
        scores(b, h, q0, qn, k0, kn, Qs, dOb, Kt, Vt, S, dP);
        gemm<false, true>(qn, d.Dp, kn, dP, kBk, Kb, d.Dp, dQa, d.Dp);  // dQ += dS k
      }
      for (int64_t i = 0; i < qn; ++i) {
        float* g = dQ.row(b, q0 + i, h);
        const float* a = dQa + i * d.Dp;
        for (int64_t c = 0; c < d.D; ++c) g[c] = d.scale * a[c];
      }
    }
  }
}

}  // namespace anvil::kernels
