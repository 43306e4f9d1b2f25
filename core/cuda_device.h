// What the always-built core needs from the CUDA backend, declared for every build:
// in a CPU-only build these report 0 devices or throw an Error that says how to get CUDA
// (core/cuda_device.cpp); with nvcc they are core/cuda/*.
#pragma once
#include <string>

#include "core/allocator.h"

namespace anvil {

class Tensor;

// How many CUDA devices this process can use: 0 in a CPU-only build or where
// no driver/GPU is present (so callers can fall back or skip with a reason).
int cuda_device_count();
// Why cuda_device_count() is 0, for log lines and skipped GPU tests.
std::string cuda_unavailable_reason();
// True when this build has the CUDA backend compiled in (a GPU may still be absent).
bool cuda_built();

// Makes device `index` this thread's current device (cudaSetDevice): the trainer calls it once at
// start-up so library handles and any work not guarded by a DeviceGuard land on the rank's GPU.
void cuda_set_device(int index);
// The device's product name ("NVIDIA H100 80GB HBM3"), for MFU's peak table and logs.
std::string cuda_device_name(int index);

// The caching allocator of CUDA device `index` (stream-aware; see core/cuda/allocator.cpp).
Allocator& cuda_allocator(int index);

// Copies between tensors of one shape where at least one side is on a CUDA device: any
// strides and dtypes, host<->device or device<->device. Device->host copies block until
// the data has arrived; host->device copies are ordered on the current stream and staged,
// so the host tensor may be reused at once.
void cuda_copy(const Tensor& src, Tensor& dst);
// Every element of a CUDA tensor (any strides) := value.
void cuda_fill(Tensor& t, double value);
// Blocks until the work queued on the device's current stream has finished.
void cuda_synchronize(int index);

}  // namespace anvil
