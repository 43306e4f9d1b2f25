// CPU-only builds: no CUDA devices. Builds with nvcc compile core/cuda/* instead.
#ifndef ANVIL_WITH_CUDA
#include "core/cuda_device.h"

#include "core/error.h"

namespace anvil {
namespace {
constexpr const char* kNoCuda =
    "this build has no CUDA backend (nvcc was not found at configure time) — install the CUDA toolkit and "
    "reconfigure, or set run.device: cpu";
}  // namespace

int cuda_device_count() { return 0; }
std::string cuda_unavailable_reason() { return kNoCuda; }
bool cuda_built() { return false; }
void cuda_set_device(int) { ANVIL_FAIL("select a CUDA device: ", kNoCuda); }
std::string cuda_device_name(int) { ANVIL_FAIL("name a CUDA device: ", kNoCuda); }
Allocator& cuda_allocator(int) { ANVIL_FAIL("no allocator for a CUDA device: ", kNoCuda); }
void cuda_copy(const Tensor&, Tensor&) { ANVIL_FAIL("copy to or from a CUDA tensor: ", kNoCuda); }
void cuda_fill(Tensor&, double) { ANVIL_FAIL("fill_ on a CUDA tensor: ", kNoCuda); }
void cuda_synchronize(int) { ANVIL_FAIL("synchronize a CUDA device: ", kNoCuda); }
}  // namespace anvil
#endif
