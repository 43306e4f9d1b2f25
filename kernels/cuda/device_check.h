// The device check every kernels/cuda entry point starts with. Internal to kernels/cuda.
#pragma once
#include <string>

#include "core/cuda_device.h"
#include "core/tensor.h"

namespace anvil::kernels::cuda::detail {

// The device index of CUDA tensor t, checked against the devices this process sees, so a
// tensor on an absent device fails with a message naming the op instead of a driver error.
inline int device_index(const char* op, const char* name, const Tensor& t) {
  ANVIL_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  ANVIL_CHECK(t.device().is_cuda(), op, ": ", name, " is ", t.describe(), " but must be on a CUDA device");
  static const int count = cuda_device_count();  // fixed for the life of the process
  const int index = t.device().index;
  ANVIL_CHECK(index >= 0 && index < count, op, ": ", name, " is ", t.describe(), " but CUDA device cuda:", index,
              " does not exist (", count, " visible", count == 0 ? ": " + cuda_unavailable_reason() : std::string(),
              ") — check CUDA_VISIBLE_DEVICES, or run on CPU tensors");
  return index;
}

}  // namespace anvil::kernels::cuda::detail
