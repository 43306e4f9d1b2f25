// Small dense linear algebra on host arrays (row-major, float or double), through
// OpenBLAS (cblas gemm) and its LAPACK (syevd, geqrf/orgqr, gesvd). Used by the
// eigenbasis optimizers (SOAP, COSMOS); the double forms serve fp64 references in tests.
#pragma once
#include <cstdint>

namespace anvil::kernels {

// C[M,N] = alpha * op(A) @ op(B) + beta * C; op(A) is [M,K], op(B) is [K,N]; all
// row-major with leading dimensions lda/ldb/ldc. beta = 0 ignores C's old contents.
template <class T>
void host_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// Eigendecomposition of the symmetric n x n matrix `a` (row-major; only its
// values are read). Writes the eigenvalues in descending order to `evals` and the
// matching unit eigenvectors as the columns of the row-major n x n `evecs`.
template <class T>
void eigh_descending(int64_t n, const T* a, T* evals, T* evecs);

// Replaces, in place, the eigenvectors of the (numerically) null eigenvalues by a
// canonical orthonormal basis of their span. A null space's basis is otherwise
// whatever the eigensolver returned (it differs between LAPACK builds, devices and
// precisions) and an optimizer that works elementwise in the eigenbasis (SOAP's
// Adam, COSMOS's second moment) would inherit that arbitrariness. Null means
// lambda <= rel_tol * max(lambda_max, 0); with every eigenvalue null the basis is
// the identity. The canonical basis is U * polar(U^T E) with U the null columns
// and E the first k coordinate axes: the orthonormal basis of span(U) closest to
// those axes, independent of which basis of the span U was. Returns k.
template <class T>
int64_t canonicalize_null_space(int64_t n, const T* evals, T* evecs, double rel_tol);

// The tolerance canonicalize_null_space uses by default for an n x n Gram matrix
// computed in precision T: n * machine epsilon of T.
template <class T>
double null_space_tolerance(int64_t n);

// Thin QR of the row-major rows x cols matrix `x` (rows >= cols); overwrites `x`
// with Q (orthonormal columns, LAPACK's Householder sign convention).
template <class T>
void qr_orthonormal(int64_t rows, int64_t cols, T* x);

// Singular values (descending, min(rows, cols) of them) and the right singular
// vectors as the rows of vt (min(rows, cols) x cols) of a row-major rows x cols matrix.
template <class T>
void svd_right(int64_t rows, int64_t cols, const T* a, T* singular_values, T* vt);

}  // namespace anvil::kernels
