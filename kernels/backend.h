// Device dispatch for the kernel entry points: each public op in kernels/*.h is defined in
// kernels/cpu/ and starts with ANVIL_DISPATCH_CUDA, which hands the call to the CUDA backend
// (kernels/cuda/ops.h) when the named tensor lives on a CUDA device. In a CPU-only build
// the line is empty and the CPU argument checks report the CUDA tensor.
#pragma once
#ifdef ANVIL_WITH_CUDA
#include "kernels/cuda/ops.h"
#define ANVIL_DISPATCH_CUDA(tensor, op, ...)                                                \
  do {                                                                                      \
    if ((tensor).defined() && (tensor).device().is_cuda()) return ::anvil::kernels::cuda::op(__VA_ARGS__); \
  } while (0)
#else
#define ANVIL_DISPATCH_CUDA(tensor, op, ...) \
  do {                                       \
  } while (0)
#endif
