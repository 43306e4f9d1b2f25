// Matrix products: C = alpha * op(A) @ op(B) + beta * C, on 2-D or batched 3-D tensors.
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// a: [M, K] (or [K, M] if trans_a), b: [K, N] (or [N, K] if trans_b), c: [M, N].
// With 3-D tensors the leading dim is a batch (equal in all three, or 1 in a or b
// to broadcast it). The last dim must be contiguous; the row stride may be larger
// (views into wider buffers are fine). beta = 0 ignores c's old contents (even NaN).
void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c,
            float alpha = 1.0f, float beta = 0.0f);

// c = op(A) @ op(B) + bias, bias [N] broadcast over every row (c assigned). On CUDA one cuBLASLt
// call with the bias epilogue (no second pass over c); on the CPU matmul then add_bias.
void matmul_bias(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias, Tensor& c);

// Allocating form: returns op(A) @ op(B).
Tensor matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b);

// While one is alive on a thread, that thread's CPU matmuls of 2 .. kDecodeMaxRows rows against
// a transposed 2-D weight (a [M, K] @ b[N, K]^T, what Linear computes) read the weight once
// for all rows instead of packing it for sgemm (kernels/cpu/matmul_few_rows.cpp): a speculative
// verification of γ + 1 tokens then costs about one decoding step. KV-cache decoding
// (TransformerLM::forward_cached) opens one; training never does, so its numerics (sgemm) stay
// as they were. One row keeps sgemv either way; CUDA is unaffected.
constexpr int64_t kDecodeMaxRows = 24;
class DecodeMatmulScope {
 public:
  DecodeMatmulScope();
  ~DecodeMatmulScope();
  DecodeMatmulScope(const DecodeMatmulScope&) = delete;
  DecodeMatmulScope& operator=(const DecodeMatmulScope&) = delete;

 private:
  bool previous_;
};
bool decode_matmul_active();  // whether this thread is inside a DecodeMatmulScope

}  // namespace anvil::kernels
