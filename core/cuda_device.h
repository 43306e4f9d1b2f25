// How many CUDA devices this process can use: 0 in a CPU-only build or where
// no driver/GPU is present (so callers can fall back or skip with a reason).
#pragma once
#include <string>

namespace anvil {

int cuda_device_count();
// Why cuda_device_count() is 0, for log lines and skipped GPU tests.
std::string cuda_unavailable_reason();

}  // namespace anvil
