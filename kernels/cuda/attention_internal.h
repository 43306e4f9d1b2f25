// What the two CUDA attention paths share: the checked problem, and the cuDNN frontend path
// (attention_cudnn.cpp) that attention.cu tries before its own kernels. Internal to kernels/cuda.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/tensor.h"
#include "kernels/shape_checks.h"

namespace anvil::kernels::cuda::detail {

// A checked attention call (kernels/shape_checks.h) and the CUDA device it runs on.
struct AttentionDims : kernels::AttentionDims {
  int device = 0;
};

// Runs the forward through cuDNN's fused SDPA when it takes the case (bf16, head dim a
// multiple of 8, q_offset 0 or Tk - Tq but not a one-query decode step, 16-byte aligned
// strides and pointers, a graph cuDNN can build) and returns true; false means nothing was
// enqueued and the caller runs its own kernel. The caller never sends a per-row mask here
// (AttentionMask::segment_ids or group_ids): the graph has no way to express one.
bool cudnn_attention_forward(const AttentionDims& d, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                             Tensor& lse, cudaStream_t stream);
bool cudnn_attention_backward(const AttentionDims& d, const Tensor& dout, const Tensor& q, const Tensor& k,
                              const Tensor& v, const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk,
                              Tensor& dv, cudaStream_t stream);

// How many forward / backward calls cuDNN has run in this process, and whether the path is on
// (ANVIL_CUDNN_ATTENTION=0 turns it off): the GPU tests check with these that a shape meant for
// cuDNN really went there, since a graph cuDNN refuses silently takes the fallback kernel.
struct CudnnAttentionRuns {
  int64_t forward = 0, backward = 0;
};
CudnnAttentionRuns cudnn_attention_runs();
bool cudnn_attention_enabled();

}  // namespace anvil::kernels::cuda::detail
