// Host dense linear algebra: cblas gemm and LAPACK (column-major) behind row-major
// wrappers. LAPACK's Fortran symbols come from the linked OpenBLAS.
#include "kernels/linalg.h"

#include <cblas.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"

extern "C" {
void ssyevd_(const char* jobz, const char* uplo, const int* n, float* a, const int* lda, float* w, float* work,
             const int* lwork, int* iwork, const int* liwork, int* info, size_t, size_t);
void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w, double* work,
             const int* lwork, int* iwork, const int* liwork, int* info, size_t, size_t);
void sgeqrf_(const int* m, const int* n, float* a, const int* lda, float* tau, float* work, const int* lwork,
             int* info);
void dgeqrf_(const int* m, const int* n, double* a, const int* lda, double* tau, double* work, const int* lwork,
             int* info);
void sorgqr_(const int* m, const int* n, const int* k, float* a, const int* lda, const float* tau, float* work,
             const int* lwork, int* info);
void dorgqr_(const int* m, const int* n, const int* k, double* a, const int* lda, const double* tau, double* work,
             const int* lwork, int* info);
void sgesvd_(const char* jobu, const char* jobvt, const int* m, const int* n, float* a, const int* lda, float* s,
             float* u, const int* ldu, float* vt, const int* ldvt, float* work, const int* lwork, int* info, size_t,
             size_t);
void dgesvd_(const char* jobu, const char* jobvt, const int* m, const int* n, double* a, const int* lda, double* s,
             double* u, const int* ldu, double* vt, const int* ldvt, double* work, const int* lwork, int* info, size_t,
             size_t);
}

namespace anvil::kernels {
namespace {

// Overloads so the templates below pick the s/d LAPACK routine by type.
void syevd(int n, float* a, float* w, float* work, int lwork, int* iwork, int liwork, int* info) {
  ssyevd_("V", "U", &n, a, &n, w, work, &lwork, iwork, &liwork, info, 1, 1);
}
void syevd(int n, double* a, double* w, double* work, int lwork, int* iwork, int liwork, int* info) {
  dsyevd_("V", "U", &n, a, &n, w, work, &lwork, iwork, &liwork, info, 1, 1);
}
void geqrf(int m, int n, float* a, float* tau, float* work, int lwork, int* info) {
  sgeqrf_(&m, &n, a, &m, tau, work, &lwork, info);
}
void geqrf(int m, int n, double* a, double* tau, double* work, int lwork, int* info) {
  dgeqrf_(&m, &n, a, &m, tau, work, &lwork, info);
}
void orgqr(int m, int n, float* a, const float* tau, float* work, int lwork, int* info) {
  sorgqr_(&m, &n, &n, a, &m, tau, work, &lwork, info);
}
void orgqr(int m, int n, double* a, const double* tau, double* work, int lwork, int* info) {
  dorgqr_(&m, &n, &n, a, &m, tau, work, &lwork, info);
}
void gesvd(const char* ju, const char* jv, int m, int n, float* a, float* s, float* u, int ldu, float* vt, int ldvt,
           float* work, int lwork, int* info) {
  sgesvd_(ju, jv, &m, &n, a, &m, s, u, &ldu, vt, &ldvt, work, &lwork, info, 1, 1);
}
void gesvd(const char* ju, const char* jv, int m, int n, double* a, double* s, double* u, int ldu, double* vt,
           int ldvt, double* work, int lwork, int* info) {
  dgesvd_(ju, jv, &m, &n, a, &m, s, u, &ldu, vt, &ldvt, work, &lwork, info, 1, 1);
}

void check_info(const char* routine, int info) {
  ANVIL_CHECK(info == 0, "LAPACK ", routine, " failed with info=", info,
              " — the input matrix holds NaN/Inf or is too ill-conditioned; check the gradients for non-finite values");
}

// Row-major rows x cols -> column-major buffer (and back).
template <class T>
std::vector<T> to_col_major(int64_t rows, int64_t cols, const T* a) {
  std::vector<T> out(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[i + j * rows] = a[i * cols + j];
  return out;
}

// Full SVD of a row-major k x k matrix: a = u * diag(s) * vt (all row-major).
template <class T>
void svd_square(int64_t k, const T* a, T* u, T* s, T* vt) {
  std::vector<T> cm = to_col_major(k, k, a), ucm(k * k), vtcm(k * k);
  const int n = static_cast<int>(k);
  int info = 0;
  T query;
  gesvd("A", "A", n, n, cm.data(), s, ucm.data(), n, vtcm.data(), n, &query, -1, &info);
  std::vector<T> work(static_cast<size_t>(query) + 1);
  gesvd("A", "A", n, n, cm.data(), s, ucm.data(), n, vtcm.data(), n, work.data(), static_cast<int>(work.size()),
        &info);
  check_info("gesvd", info);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) {
      u[i * k + j] = ucm[i + j * k];
      vt[i * k + j] = vtcm[i + j * k];
    }
}

}  // namespace

template <>
void host_gemm<float>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                      const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
              B, ldb, beta, C, ldc);
}
template <>
void host_gemm<double>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                       const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
              B, ldb, beta, C, ldc);
}

template <class T>
void eigh_descending(int64_t n, const T* a, T* evals, T* evecs) {
  // A symmetric row-major matrix is its own column-major transpose.
  std::vector<T> z(a, a + n * n), w(n);
  const int ni = static_cast<int>(n);
  int info = 0, iquery = 0;
  T query;
  syevd(ni, z.data(), w.data(), &query, -1, &iquery, -1, &info);
  std::vector<T> work(static_cast<size_t>(query) + 1);
  std::vector<int> iwork(static_cast<size_t>(std::max(iquery, 1)));
  syevd(ni, z.data(), w.data(), work.data(), static_cast<int>(work.size()), iwork.data(),
        static_cast<int>(iwork.size()), &info);
  check_info("syevd", info);
  // LAPACK returns ascending order; column c of the output is eigenvector n-1-c.
  for (int64_t c = 0; c < n; ++c) {
    evals[c] = w[n - 1 - c];
    for (int64_t i = 0; i < n; ++i) evecs[i * n + c] = z[i + (n - 1 - c) * n];
  }
}

template <class T>
double null_space_tolerance(int64_t n) {
  return static_cast<double>(n) * static_cast<double>(std::numeric_limits<T>::epsilon());
}

template <class T>
int64_t canonicalize_null_space(int64_t n, const T* evals, T* evecs, double rel_tol) {
  const double top = std::max(0.0, static_cast<double>(evals[0]));
  int64_t k = 0;
  while (k < n && static_cast<double>(evals[n - 1 - k]) <= rel_tol * top) ++k;
  if (k == 0) return 0;
  const int64_t c0 = n - k;  // the null columns are the trailing ones
  // M = U^T E with E the first k axes: M[i][j] = U[j][i]. Polar factor in double.
  std::vector<double> mm(k * k), u(k * k), s(k), vt(k * k), polar(k * k, 0.0);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < k; ++j) mm[i * k + j] = static_cast<double>(evecs[j * n + c0 + i]);
  svd_square<double>(k, mm.data(), u.data(), s.data(), vt.data());
  host_gemm<double>(false, false, k, k, k, 1.0, u.data(), k, vt.data(), k, 0.0, polar.data(), k);
  // Columns c0.. of evecs <- U * polar.
  std::vector<double> row(k);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < k; ++j) {
      double acc = 0;
      for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(evecs[r * n + c0 + i]) * polar[i * k + j];
      row[j] = acc;
    }
    for (int64_t j = 0; j < k; ++j) evecs[r * n + c0 + j] = static_cast<T>(row[j]);
  }
  return k;
}

template <class T>
void qr_orthonormal(int64_t rows, int64_t cols, T* x) {
  ANVIL_CHECK(rows >= cols, "qr_orthonormal: a ", rows, "x", cols, " matrix has more columns than rows");
  std::vector<T> a = to_col_major(rows, cols, x), tau(cols);
  const int m = static_cast<int>(rows), n = static_cast<int>(cols);
  int info = 0;
  T query;
  geqrf(m, n, a.data(), tau.data(), &query, -1, &info);
  T query2;
  orgqr(m, n, a.data(), tau.data(), &query2, -1, &info);
  std::vector<T> work(static_cast<size_t>(std::max(query, query2)) + 1);
  geqrf(m, n, a.data(), tau.data(), work.data(), static_cast<int>(work.size()), &info);
  check_info("geqrf", info);
  orgqr(m, n, a.data(), tau.data(), work.data(), static_cast<int>(work.size()), &info);
  check_info("orgqr", info);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) x[i * cols + j] = a[i + j * rows];
}

template <class T>
void svd_right(int64_t rows, int64_t cols, const T* a, T* singular_values, T* vt) {
  std::vector<T> cm = to_col_major(rows, cols, a);
  const int m = static_cast<int>(rows), n = static_cast<int>(cols), k = std::min(m, n);
  std::vector<T> vtcm(static_cast<size_t>(k) * n);
  int info = 0;
  T query, dummy = 0;
  gesvd("N", "S", m, n, cm.data(), singular_values, &dummy, 1, vtcm.data(), k, &query, -1, &info);
  std::vector<T> work(static_cast<size_t>(query) + 1);
  gesvd("N", "S", m, n, cm.data(), singular_values, &dummy, 1, vtcm.data(), k, work.data(),
        static_cast<int>(work.size()), &info);
  check_info("gesvd", info);
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < n; ++j) vt[i * n + j] = vtcm[i + j * k];
}

#define ANVIL_LINALG_INSTANTIATE(T)                                               \
  template void eigh_descending<T>(int64_t, const T*, T*, T*);                    \
  template double null_space_tolerance<T>(int64_t);                               \
  template int64_t canonicalize_null_space<T>(int64_t, const T*, T*, double);     \
  template void qr_orthonormal<T>(int64_t, int64_t, T*);                          \
  template void svd_right<T>(int64_t, int64_t, const T*, T*, T*);
ANVIL_LINALG_INSTANTIATE(float)
ANVIL_LINALG_INSTANTIATE(double)
#undef ANVIL_LINALG_INSTANTIATE

}  // namespace anvil::kernels
