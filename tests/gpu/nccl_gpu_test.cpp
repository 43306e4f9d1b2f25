// NCCL over every visible GPU of one process (needs 2 or more: tests/support/gpu_main.cpp
// skips with the reason otherwise): anvil CUDA tensors all-reduced on each device's comm
// stream, ordered after the compute stream with an Event, the buffers marked with
// record_stream, and the sums checked exactly (small integers are exact in f32 and bf16).
// This checks the plumbing a multi-GPU run stands on: per-device allocators and streams,
// DeviceGuard, events across streams, NCCL's dtype mapping.
// TODO(merge): once parallel/cuda's NCCL communicator is merged, add an mpirun -np 2 test of it
// (one GPU per rank) beside this one.
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <nccl.h>

#include <string>
#include <vector>

#include "core/cuda/runtime.h"
#include "core/cuda_device.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

#define EXPECT_NCCL_OK(expr)                                                                       \
  do {                                                                                             \
    const ncclResult_t anvil_nccl_rc_ = (expr);                                                    \
    ASSERT_EQ(anvil_nccl_rc_, ncclSuccess) << #expr << ": " << ncclGetErrorString(anvil_nccl_rc_); \
  } while (0)

struct Comms {
  std::vector<ncclComm_t> comms;
  ~Comms() {
    for (ncclComm_t c : comms) ncclCommDestroy(c);
  }
};

// Rank d contributes (d + 1) * (i % 13 - 6) at element i; the sum is n(n+1)/2 * (i % 13 - 6).
void all_reduce_every_device(DType dtype, ncclDataType_t nccl_type) {
  const int n = cuda_device_count();
  const int64_t count = (1 << 20) + 3;
  Comms c;
  c.comms.resize(n);
  std::vector<int> devices(n);
  for (int d = 0; d < n; ++d) devices[d] = d;
  EXPECT_NCCL_OK(ncclCommInitAll(c.comms.data(), n, devices.data()));

  std::vector<Tensor> bufs;
  for (int d = 0; d < n; ++d) {
    Tensor host = Tensor::empty({count});
    for (int64_t i = 0; i < count; ++i) host.data<float>()[i] = static_cast<float>((d + 1) * (i % 13 - 6));
    bufs.push_back(host.to(dtype).to(Device::cuda(d)));  // queued on device d's compute stream
    cuda::Event ready;
    ready.record(cuda::current_stream(d));
    ready.wait(cuda::comm_stream(d));  // the collective must not start before the copy lands
    cuda::record_stream(bufs[d], cuda::comm_stream(d));
  }
  EXPECT_NCCL_OK(ncclGroupStart());
  for (int d = 0; d < n; ++d) {
    cuda::DeviceGuard guard(d);
    EXPECT_NCCL_OK(ncclAllReduce(bufs[d].raw_data(), bufs[d].raw_data(), static_cast<size_t>(count), nccl_type, ncclSum,
                                 c.comms[d], cuda::comm_stream(d)));
  }
  EXPECT_NCCL_OK(ncclGroupEnd());
  for (int d = 0; d < n; ++d) {
    cuda::DeviceGuard guard(d);
    ANVIL_CUDA_CHECK(cudaStreamSynchronize(cuda::comm_stream(d)));
  }
  const float ranks_sum = static_cast<float>(n * (n + 1) / 2);
  for (int d = 0; d < n; ++d) {
    const std::vector<float> got = bufs[d].to(Device::cpu()).to(DType::F32).to_vector();
    int64_t wrong = 0;
    for (int64_t i = 0; i < count; ++i) wrong += got[i] != ranks_sum * static_cast<float>(i % 13 - 6);
    EXPECT_EQ(wrong, 0) << "device " << d << " (" << dtype_name(dtype) << "): elements not equal to the exact sum";
  }
}

TEST(NcclGpu, AllReduceF32OverEveryDevice) { all_reduce_every_device(DType::F32, ncclFloat32); }
TEST(NcclGpu, AllReduceBf16OverEveryDevice) { all_reduce_every_device(DType::BF16, ncclBfloat16); }

}  // namespace
