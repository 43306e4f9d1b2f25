// Matrix products on the CPU through OpenBLAS cblas_sgemm (row-major, strided
// rows). Batches loop over sgemm calls; OpenBLAS threads each call itself. One row takes
// sgemv; a few rows inside a DecodeMatmulScope take matmul_few_rows.
#include "kernels/matmul.h"

#include <cblas.h>

#include <algorithm>

#include "kernels/backend.h"
#include "kernels/cpu/common.h"
#include "kernels/cpu/matmul_few_rows.h"
#include "kernels/elementwise.h"
#include "kernels/matrix_layout.h"

namespace anvil::kernels {
namespace {

constexpr const char* kOp = "matmul";

MatrixLayout as_mat(const char* name, const Tensor& t) {
  cpu::require_cpu_dtype(kOp, name, t, DType::F32);
  return matrix_layout(kOp, name, t);
}

void require_disjoint(const Tensor& c, const char* name, const Tensor& x) {
  ANVIL_CHECK(!views_may_overlap(c, x), kOp, ": c ", c.describe(), " overlaps ", name, " ", x.describe(),
              " in memory — write the product into a separate buffer");
}

std::string op_shape(const Tensor& t, bool trans) {
  return shape_str(t.shape()) + (trans ? " (transposed)" : "");
}

thread_local bool decode_matmul = false;

}  // namespace

DecodeMatmulScope::DecodeMatmulScope() : previous_(decode_matmul) { decode_matmul = true; }
DecodeMatmulScope::~DecodeMatmulScope() { decode_matmul = previous_; }
bool decode_matmul_active() { return decode_matmul; }

void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha, float beta) {
  ANVIL_DISPATCH_CUDA(a, matmul, a, trans_a, b, trans_b, c, alpha, beta);
  const MatrixLayout ma = as_mat("a", a), mb = as_mat("b", b), mc = as_mat("c", c);
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
  float* const pa = ma.data<float>();
  float* const pb = mb.data<float>();
  float* const pc = mc.data<float>();

  if (K == 0) {  // op(A) @ op(B) is all zeros: C = beta * C (beta = 0 overwrites NaN).
    for (int64_t i = 0; i < B; ++i)
      for (int64_t r = 0; r < M; ++r) {
        float* row = pc + i * mc.batch_stride + r * mc.ld;
        for (int64_t j = 0; j < N; ++j) row[j] = beta == 0.0f ? 0.0f : beta * row[j];
      }
    return;
  }

  // One output row (decoding a single token): a matrix-vector product. sgemm would
  // first pack (copy) all of b, doubling the memory traffic of a memory-bound step.
  if (B == 1 && M == 1) {
    const blasint incx = static_cast<blasint>(trans_a ? ma.ld : 1);  // op(a) = a [1, K] or a^T with a [K, 1]
    if (beta == 0.0f) std::fill(pc, pc + N, 0.0f);  // beta = 0 ignores NaN in c
    if (trans_b)  // c^T = b [N, K] @ x
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(N), static_cast<blasint>(K), alpha, pb,
                  static_cast<blasint>(mb.ld), pa, incx, beta, pc, 1);
    else  // c^T = b^T @ x with b [K, N]
      cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<blasint>(K), static_cast<blasint>(N), alpha, pb,
                  static_cast<blasint>(mb.ld), pa, incx, beta, pc, 1);
    return;
  }

  // A few token rows of a KV-cache decoding call against a weight [N, K]: read it once.
  if (decode_matmul && B == 1 && M <= kDecodeMaxRows && !trans_a && trans_b) {
    cpu::matmul_few_rows(pa, ma.ld, pb, mb.ld, pc, mc.ld, M, N, K, alpha, beta);
    return;
  }

  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  // A batched, untransposed a against a shared b whose batches sit back to back
  // (as does c) is one tall product: [B*M, K] @ [K, N].
  if (B > 1 && mb.batch == 1 && ma.batch == B && !trans_a && ma.batch_stride == M * ma.ld &&
      mc.batch_stride == M * mc.ld) {
    cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(B * M), static_cast<blasint>(N),
                static_cast<blasint>(K), alpha, pa, static_cast<blasint>(ma.ld), pb,
                static_cast<blasint>(mb.ld), beta, pc, static_cast<blasint>(mc.ld));
    return;
  }
  for (int64_t i = 0; i < B; ++i) {
    cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K),
                alpha, pa + i * ma.batch_stride, static_cast<blasint>(ma.ld), pb + i * mb.batch_stride,
                static_cast<blasint>(mb.ld), beta, pc + i * mc.batch_stride, static_cast<blasint>(mc.ld));
  }
}

void matmul_bias(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias, Tensor& c) {
  ANVIL_DISPATCH_CUDA(a, matmul_bias, a, trans_a, b, trans_b, bias, c, /*gelu=*/false);
  matmul(a, trans_a, b, trans_b, c);
  add_bias(c, bias);
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
