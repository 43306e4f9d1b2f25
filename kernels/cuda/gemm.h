// cuBLASLt GEMM with a fused epilogue, for CUDA code and models that want a Linear + bias
// (+ GELU) as one kernel. The plain product is kernels/matmul.h (anvil::kernels::cuda::matmul
// on CUDA tensors).
#pragma once
#include "core/tensor.h"

namespace anvil::kernels::cuda {

// c = act(op(a) @ op(b) + bias), bias [N] (f32 or bf16, contiguous) broadcast over the rows
// (and batches) of c; act is GELU (tanh approximation, as kernels/activation.h) when `gelu`,
// else the identity. Shapes, dtypes, strides and batching as kernels::matmul (c is assigned).
// One cuBLASLt call with CUBLASLT_EPILOGUE_BIAS / GELU_BIAS where cuBLASLt takes the shape and
// bias (bias of c's dtype, 16-byte aligned); otherwise the product and then one elementwise pass.
void matmul_bias(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias, Tensor& c,
                 bool gelu = false);

// As above with gelu, also writing the GELU input op(a) @ op(b) + bias into pre_gelu (c's
// shape and dtype; what gelu_backward needs), through CUBLASLT_EPILOGUE_GELU_AUX_BIAS when
// pre_gelu's row stride is a multiple of 8.
void matmul_bias_gelu(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias, Tensor& c,
                      Tensor& pre_gelu);

}  // namespace anvil::kernels::cuda
