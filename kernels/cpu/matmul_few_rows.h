// The CPU's decoding matmul (kernels/cpu/matmul_few_rows.cpp); kernels::matmul calls it inside a
// DecodeMatmulScope (kernels/matmul.h).
#pragma once
#include <cstdint>

namespace anvil::kernels::cpu {

// Row-major c[M, N] = alpha * a[M, K] @ b[N, K]^T + beta * c (beta = 0 ignores c's contents),
// leading dimensions lda, ldb, ldc. Reads b once; meant for M up to ~16. Row i of c is the same
// bits whatever M is.
void matmul_few_rows(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t M,
                     int64_t N, int64_t K, float alpha, float beta);

}  // namespace anvil::kernels::cpu
