// The decoding matmul on the CPU: c = alpha * a @ b^T + beta * c for a with few rows (the
// tokens of one KV-cache decoding or verification call) against a weight b [N, K]. BLAS sgemm
// first packs (copies) b, which at a handful of rows costs more than the product: a speculative
// verification of 5 tokens took ~3x a one-token step. Here b is streamed once from memory and
// each of its rows meets all rows of a while it sits in cache, so the call costs about one
// matrix-vector product while the product is memory-bound.
#include <cstdint>
#include <cstring>

#include "kernels/cpu/matmul_few_rows.h"

namespace anvil::kernels::cpu {
namespace {

// Eight float lanes (one AVX register with -march=native; the compiler splits it otherwise).
typedef float Lanes __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;
// Rows of a per pass over a block of b: the accumulators (rows x block of b, 8 to 12) hide the
// latency of the multiply-adds and still fit the 16 AVX registers beside an input row.
constexpr int kMaxTileRows = 4;
// The weight is prefetched this many of its rows ahead: memory then streams while the tile
// computes (without it the compute of a few rows added to, rather than hid behind, the reads).
constexpr int kPrefetchRows = 8;

Lanes load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}

// The dot products of rows a[0 .. MR) with rows b[0 .. NR), written to c (alpha, beta applied).
// Every (row of a, row of b) pair is summed in the same order whatever MR, NR and the call's row
// count: eight lane sums over k < K8, the lanes added in order, then the tail k >= K8. A row's
// result thus does not depend on how many rows the call holds.
template <int MR, int NR>
void tile(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t K, float alpha,
          float beta) {
  const int64_t K8 = K / kLanes * kLanes;
  Lanes acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = Lanes{};
  const float* ahead = b + kPrefetchRows * ldb;
  for (int64_t k = 0; k < K8; k += kLanes) {
    for (int n = 0; n < NR; ++n) __builtin_prefetch(ahead + n * ldb + k);
    Lanes w[NR];
    for (int n = 0; n < NR; ++n) w[n] = load(b + n * ldb + k);
    for (int m = 0; m < MR; ++m) {
      const Lanes x = load(a + m * lda + k);
      for (int n = 0; n < NR; ++n) acc[m][n] += x * w[n];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) {
      float sum = 0.0f;
      for (int l = 0; l < kLanes; ++l) sum += acc[m][n][l];
      for (int64_t k = K8; k < K; ++k) sum += a[m * lda + k] * b[n * ldb + k];
      float& out = c[m * ldc + n];
      out = beta == 0.0f ? alpha * sum : alpha * sum + beta * out;  // beta = 0 ignores NaN in c
    }
}

// Rows [0, MR) of a against NR rows of b, with MR (1 .. kMaxTileRows) picked at run time.
template <int NR>
void rows_tile(int64_t MR, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t K,
               float alpha, float beta) {
  switch (MR) {
    case 1: return tile<1, NR>(a, lda, b, ldb, c, ldc, K, alpha, beta);
    case 2: return tile<2, NR>(a, lda, b, ldb, c, ldc, K, alpha, beta);
    case 3: return tile<3, NR>(a, lda, b, ldb, c, ldc, K, alpha, beta);
    default: return tile<4, NR>(a, lda, b, ldb, c, ldc, K, alpha, beta);
  }
}

int64_t passes_for(int64_t M) { return (M + kMaxTileRows - 1) / kMaxTileRows; }

// All M rows of a against NR rows of b, in passes of at most kMaxTileRows rows (split evenly).
template <int NR>
void column_block(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t M,
                  int64_t K, float alpha, float beta) {
  const int64_t passes = passes_for(M);
  for (int64_t p = 0, m = 0; p < passes; ++p) {
    const int64_t rows = (M - m) / (passes - p);
    rows_tile<NR>(rows, a + m * lda, lda, b, ldb, c + m * ldc, ldc, K, alpha, beta);
    m += rows;
  }
}

// The columns in blocks of NR rows of b, split between the threads: each thread reads its own
// part of the weight once.
template <int NR>
void columns(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t M, int64_t N,
             int64_t K, float alpha, float beta) {
  const int64_t blocks = N / NR;
#pragma omp parallel for schedule(static) if (N * K >= (1 << 15))
  for (int64_t j = 0; j < blocks; ++j)
    column_block<NR>(a, lda, b + j * NR * ldb, ldb, c + j * NR, ldc, M, K, alpha, beta);
  for (int64_t n = blocks * NR; n < N; ++n) column_block<1>(a, lda, b + n * ldb, ldb, c + n, ldc, M, K, alpha, beta);
}

}  // namespace

void matmul_few_rows(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t M,
                     int64_t N, int64_t K, float alpha, float beta) {
  const int64_t tile_rows = (M + passes_for(M) - 1) / passes_for(M);  // the largest pass
  switch (tile_rows) {  // rows of b per block: 8 to 12 accumulators
    case 1:
    case 2: return columns<6>(a, lda, b, ldb, c, ldc, M, N, K, alpha, beta);
    case 3: return columns<4>(a, lda, b, ldb, c, ldc, M, N, K, alpha, beta);
    default: return columns<3>(a, lda, b, ldb, c, ldc, M, N, K, alpha, beta);
  }
}

}  // namespace anvil::kernels::cpu
