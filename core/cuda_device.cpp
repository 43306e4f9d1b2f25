// CPU-only builds: no CUDA devices. Builds with nvcc compile core/cuda_device.cu instead.
#ifndef ANVIL_WITH_CUDA
#include "core/cuda_device.h"

namespace anvil {
int cuda_device_count() { return 0; }
std::string cuda_unavailable_reason() { return "this build has no CUDA backend (nvcc was not found at configure time)"; }
}  // namespace anvil
#endif
