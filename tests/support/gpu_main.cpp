// main() for the GPU test binaries (CTest label `gpu`). Where no usable CUDA device exists
// (a CPU-only build, no driver, no GPU, or fewer GPUs than the binary needs) it prints why
// and returns 77, which tests/CMakeLists.txt declares as SKIP_RETURN_CODE: CTest then
// reports the test as skipped, never as passed. ANVIL_GPU_TEST_MIN_DEVICES (a compile
// definition per binary) is how many devices the binary needs; 1 by default.
#include <gtest/gtest.h>

#include <cstdio>

#include "core/cuda_device.h"

#ifndef ANVIL_GPU_TEST_MIN_DEVICES
#define ANVIL_GPU_TEST_MIN_DEVICES 1
#endif

namespace {
constexpr int kSkipped = 77;
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (::testing::GTEST_FLAG(list_tests)) return RUN_ALL_TESTS();  // listing touches no device
  if (!anvil::cuda_built()) {
    std::printf("SKIPPED: %s\n", anvil::cuda_unavailable_reason().c_str());
    return kSkipped;
  }
  const int devices = anvil::cuda_device_count();
  if (devices == 0) {
    std::printf("SKIPPED: %s\n", anvil::cuda_unavailable_reason().c_str());
    return kSkipped;
  }
  if (devices < ANVIL_GPU_TEST_MIN_DEVICES) {
    std::printf("SKIPPED: this test needs %d CUDA devices, %d visible\n", ANVIL_GPU_TEST_MIN_DEVICES, devices);
    return kSkipped;
  }
  return RUN_ALL_TESTS();
}
