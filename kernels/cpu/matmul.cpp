// Matrix products on the CPU through OpenBLAS cblas_sgemm (row-major, strided
// rows). Batches loop over sgemm calls; OpenBLAS threads each call itself.
#include "kernels/matmul.h"

#include <cblas.h>

#include <algorithm>

#include "kernels/backend.h"
#include "kernels/cpu/common.h"

namespace anvil::kernels {
namespace {

constexpr const char* kOp = "matmul";

// One operand as a stack of row-major matrices.
struct Mat {
  float* p = nullptr;
  int64_t batch = 1, rows = 0, cols = 0;
  int64_t ld = 0;            // row stride (>= cols)
  int64_t batch_stride = 0;  // 0 when the batch is 1 (broadcast)
};

Mat as_mat(const char* name, const Tensor& t) {
  cpu::require_cpu_dtype(kOp, name, t, DType::F32);
  ANVIL_CHECK(t.dim() == 2 || t.dim() == 3, kOp, ": ", name, " is ", t.describe(),
              " but must be 2-D [rows, cols] or 3-D [batch, rows, cols]");
  Mat m;
  m.p = t.data<float>();
  m.rows = t.size(-2);
  m.cols = t.size(-1);
  ANVIL_CHECK(m.cols <= 1 || t.stride(-1) == 1, kOp, ": ", name, " ", t.describe(), " (strides ",
              shape_str(t.strides()), ") needs a contiguous last dimension — call .contiguous() first");
  m.ld = (m.rows <= 1 || m.cols == 0) ? std::max<int64_t>(1, m.cols) : t.stride(-2);
  ANVIL_CHECK(m.ld >= std::max<int64_t>(1, m.cols), kOp, ": ", name, " ", t.describe(), " has row stride ", m.ld,
              " smaller than its ", m.cols, " columns — call .contiguous() first");
  if (t.dim() == 3) {
    m.batch = t.size(0);
    m.batch_stride = m.batch == 1 ? 0 : t.stride(0);
  }
  return m;
}

// [first, last] element offsets (from the storage start) a matrix stack touches.
std::pair<int64_t, int64_t> span(const Tensor& t) {
  int64_t lo = t.offset(), hi = t.offset();
  for (int d = 0; d < t.dim(); ++d) {
    if (t.size(d) == 0) return {0, -1};
    const int64_t ext = (t.size(d) - 1) * t.stride(d);
    (ext < 0 ? lo : hi) += ext;
  }
  return {lo, hi};
}

// True when two views of one storage could share an element. Row-strided views
// with the same row stride whose column ranges never meet are disjoint even
// though their address spans interleave (e.g. column slices of one buffer).
bool may_overlap(const Tensor& c, const Tensor& x) {
  if (!c.same_storage(x)) return false;
  const auto sc = span(c), sx = span(x);
  if (sc.first > sc.second || sx.first > sx.second || sc.second < sx.first || sx.second < sc.first) return false;
  const int64_t ld = c.stride(-2);
  if (ld <= 0 || x.stride(-2) != ld) return true;
  for (const Tensor* t : {&c, &x})
    for (int d = 0; d + 1 < t->dim(); ++d)
      if (t->stride(d) % ld != 0) return true;
  const int64_t c0 = c.offset() % ld, x0 = x.offset() % ld;
  const int64_t c1 = c0 + c.size(-1), x1 = x0 + x.size(-1);
  return !(c1 <= ld && x1 <= ld && (c1 <= x0 || x1 <= c0));
}

void require_disjoint(const Tensor& c, const char* name, const Tensor& x) {
  ANVIL_CHECK(!may_overlap(c, x), kOp, ": c ", c.describe(), " overlaps ", name, " ", x.describe(),
              " in memory — write the product into a separate buffer");
}

std::string op_shape(const Tensor& t, bool trans) {
  return shape_str(t.shape()) + (trans ? " (transposed)" : "");
}

}  // namespace

void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha, float beta) {
  ANVIL_DISPATCH_CUDA(a, matmul, a, trans_a, b, trans_b, c, alpha, beta);
  const Mat ma = as_mat("a", a), mb = as_mat("b", b), mc = as_mat("c", c);
  const int64_t M = trans_a ? ma.cols : ma.rows;
  const int64_t K = trans_a ? ma.rows : ma.cols;
  const int64_t Kb = trans_b ? mb.cols : mb.rows;
  const int64_t N = trans_b ? mb.rows : mb.cols;
  ANVIL_CHECK(K == Kb, kOp, ": inner dimensions differ: a ", op_shape(a, trans_a), " has K = ", K, " but b ",
              op_shape(b, trans_b), " has K = ", Kb);
  ANVIL_CHECK(mc.rows == M && mc.cols == N, kOp, ": c has shape ", shape_str(c.shape()), " but a ",
              op_shape(a, trans_a), " @ b ", op_shape(b, trans_b), " is [", M, ", ", N, "]");
  const bool batched = a.dim() == 3 || b.dim() == 3;
  ANVIL_CHECK(c.dim() == (batched ? 3 : 2), kOp, ": c has shape ", shape_str(c.shape()), " but a ",
              shape_str(a.shape()), " and b ", shape_str(b.shape()), " need a ", batched ? "3-D" : "2-D", " output");
  const int64_t B = mc.batch;
  ANVIL_CHECK((ma.batch == B || ma.batch == 1) && (mb.batch == B || mb.batch == 1), kOp,
              ": batch sizes do not broadcast: a ", shape_str(a.shape()), ", b ", shape_str(b.shape()), ", c ",
              shape_str(c.shape()), " — a and b need c's batch or 1");
  ANVIL_CHECK(B <= 1 || c.stride(0) != 0, kOp, ": c ", c.describe(), " has a zero batch stride");
  require_disjoint(c, "a", a);
  require_disjoint(c, "b", b);
  if (M == 0 || N == 0 || B == 0) return;

  if (K == 0) {  // op(A) @ op(B) is all zeros: C = beta * C (beta = 0 overwrites NaN).
    for (int64_t i = 0; i < B; ++i)
      for (int64_t r = 0; r < M; ++r) {
        float* row = mc.p + i * mc.batch_stride + r * mc.ld;
        for (int64_t j = 0; j < N; ++j) row[j] = beta == 0.0f ? 0.0f : beta * row[j];
      }
    return;
  }

  // One output row (decoding a single token): a matrix-vector product. sgemm would
  // first pack (copy) all of b, doubling the memory traffic of a memory-bound step.
  if (B == 1 && M == 1) {
    const blasint incx = static_cast<blasint>(trans_a ? ma.ld : 1);  // op(a) = a [1, K] or a^T with a [K, 1]
    if (beta == 0.0f) std::fill(mc.p, mc.p + N, 0.0f);  // beta = 0 ignores NaN in c
    if (trans_b)  // c^T = b [N, K] @ x
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(N), static_cast<blasint>(K), alpha, mb.p,
                  static_cast<blasint>(mb.ld), ma.p, incx, beta, mc.p, 1);
    else  // c^T = b^T @ x with b [K, N]
      cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<blasint>(K), static_cast<blasint>(N), alpha, mb.p,
                  static_cast<blasint>(mb.ld), ma.p, incx, beta, mc.p, 1);
    return;
  }

  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  // A batched, untransposed a against a shared b whose batches sit back to back
  // (as does c) is one tall product: [B*M, K] @ [K, N].
  if (B > 1 && mb.batch == 1 && ma.batch == B && !trans_a && ma.batch_stride == M * ma.ld &&
      mc.batch_stride == M * mc.ld) {
    cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(B * M), static_cast<blasint>(N),
                static_cast<blasint>(K), alpha, ma.p, static_cast<blasint>(ma.ld), mb.p,
                static_cast<blasint>(mb.ld), beta, mc.p, static_cast<blasint>(mc.ld));
    return;
  }
  for (int64_t i = 0; i < B; ++i) {
    cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K),
                alpha, ma.p + i * ma.batch_stride, static_cast<blasint>(ma.ld), mb.p + i * mb.batch_stride,
                static_cast<blasint>(mb.ld), beta, mc.p + i * mc.batch_stride, static_cast<blasint>(mc.ld));
  }
}

Tensor matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b) {
  ANVIL_CHECK(a.defined() && b.defined(), kOp, ": a and b must be defined tensors");
#ifdef ANVIL_WITH_CUDA
  const bool on_cuda = a.device().is_cuda();
#else
  const bool on_cuda = false;  // a CUDA tensor then fails require_cpu with its message
#endif
  if (!on_cuda) {
    cpu::require_cpu("matmul", "a", a);
    cpu::require_cpu("matmul", "b", b);
  }
  ANVIL_CHECK((a.dim() == 2 || a.dim() == 3) && (b.dim() == 2 || b.dim() == 3), kOp, ": a ", a.describe(),
              " and b ", b.describe(), " must be 2-D or 3-D");
  const int64_t M = trans_a ? a.size(-1) : a.size(-2);
  const int64_t N = trans_b ? b.size(-2) : b.size(-1);
  Shape shape{M, N};
  if (a.dim() == 3 || b.dim() == 3) {
    const int64_t ba = a.dim() == 3 ? a.size(0) : 1, bb = b.dim() == 3 ? b.size(0) : 1;
    shape.insert(shape.begin(), ba == 1 ? bb : ba);
  }
  // On CUDA the product keeps the operands' dtype (bf16 in, bf16 out); the CPU computes in f32.
  Tensor c = Tensor::empty(shape, on_cuda ? a.dtype() : DType::F32, a.device());
  matmul(a, trans_a, b, trans_b, c, 1.0f, 0.0f);
  return c;
}

}  // namespace anvil::kernels
