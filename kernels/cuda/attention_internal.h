// What the two CUDA attention paths share: the checked problem, and the cuDNN frontend path
// (attention_cudnn.cpp) that attention.cu tries before its own kernels. Internal to kernels/cuda.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/tensor.h"

namespace anvil::kernels::cuda::detail {

// A checked attention call (kernels/attention.h): q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D].
struct AttentionDims {
  int64_t B = 0, Tq = 0, Tk = 0, Hq = 0, Hkv = 0, D = 0, group = 1;
  int64_t q_offset = 0, window = 0;
  float scale = 1.0f;
  int device = 0;
};

// Runs the forward through cuDNN's fused SDPA when it takes the case (bf16, head dim a
// multiple of 8, q_offset 0 or Tk - Tq, aligned strides, a graph cuDNN can build) and returns
// true; false means nothing was enqueued and the caller runs its own kernel.
bool cudnn_attention_forward(const AttentionDims& d, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                             Tensor& lse, cudaStream_t stream);
bool cudnn_attention_backward(const AttentionDims& d, const Tensor& dout, const Tensor& q, const Tensor& k,
                              const Tensor& v, const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk,
                              Tensor& dv, cudaStream_t stream);

}  // namespace anvil::kernels::cuda::detail
