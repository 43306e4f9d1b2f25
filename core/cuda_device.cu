#include <cuda_runtime.h>

#include "core/cuda_device.h"

namespace anvil {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls are not poisoned
    return 0;
  }
  return count;
}

std::string cuda_unavailable_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("CUDA runtime reports: ") + cudaGetErrorString(err);
  }
  return count == 0 ? "no CUDA device is visible" : "";
}

}  // namespace anvil
