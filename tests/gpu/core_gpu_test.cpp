// core on CUDA: Tensor::to(Device) round trips for every dtype, strided copies and dtype
// conversions in each direction, fill, and the caching allocator (block reuse, the size-class
// rule, live/peak counters, record_stream holding a block until another stream is done).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "core/cuda/runtime.h"
#include "core/cuda_device.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// Contiguous CPU tensors of one dtype and shape hold the same bytes.
bool same_bytes(const Tensor& a, const Tensor& b) {
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  return ca.dtype() == cb.dtype() && ca.shape() == cb.shape() &&
         std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

// A CPU tensor of `dtype` whose values that dtype holds exactly (small integers, halves).
Tensor exact_values(const Shape& shape, DType dtype) {
  Tensor f = Tensor::empty(shape);
  for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = static_cast<float>((i * 37) % 101 - 50) * 0.5f;
  if (dtype == DType::I32 || dtype == DType::I64 || dtype == DType::I8) {
    for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = static_cast<float>((i * 37) % 101 - 50);
  }
  if (dtype == DType::U8) {
    for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = static_cast<float>((i * 37) % 251);
  }
  return f.to(dtype);
}

TEST(TensorGpu, RoundTripEveryDtypeIsBitExact) {
  for (const DType dt : {DType::F32, DType::BF16, DType::F16, DType::I32, DType::I64, DType::I8, DType::U8}) {
    const Tensor host = exact_values({3, 257}, dt);
    const Tensor dev = host.to(gpu());
    EXPECT_TRUE(dev.device() == gpu()) << dtype_name(dt);
    EXPECT_EQ(dev.dtype(), dt);
    EXPECT_TRUE(same_bytes(dev.to(Device::cpu()), host)) << dtype_name(dt) << " changed on the round trip";
    EXPECT_TRUE(same_bytes(dev.clone().to(Device::cpu()), host)) << dtype_name(dt) << " device clone";
  }
}

TEST(TensorGpu, HostSourceMayBeReusedRightAfterTheCopy) {
  Tensor host = random_tensor({1 << 20}, 201);  // 4 MiB from pageable memory
  const Tensor original = host.clone();
  const Tensor dev = host.to(gpu());
  host.fill_(-1.0);  // core/cuda_device.h: host->device copies are staged; the source is free at once
  EXPECT_TRUE(same_bytes(dev.to(Device::cpu()), original));
}

TEST(TensorGpu, StridedCopiesInEveryDirection) {
  const Tensor src = random_tensor({12, 20}, 202);
  // device -> host from a transposed (non-contiguous) device view
  const Tensor dev = src.to(gpu());
  EXPECT_TRUE(same_bytes(dev.transpose(0, 1).to(Device::cpu()), src.transpose(0, 1).contiguous()));
  EXPECT_TRUE(same_bytes(dev.transpose(0, 1).contiguous().to(Device::cpu()), src.transpose(0, 1).contiguous()));

  // host (strided) -> device (strided): columns 4..14 of a wider device buffer
  Tensor wide = Tensor::zeros({20, 30}, DType::F32, gpu());
  Tensor window = wide.slice(1, 4, 16);
  window.copy_(src.transpose(0, 1).slice(1, 0, 12));
  Tensor want = Tensor::zeros({20, 30});
  Tensor want_window = want.slice(1, 4, 16);
  want_window.copy_(src.transpose(0, 1).slice(1, 0, 12));
  EXPECT_TRUE(same_bytes(wide.to(Device::cpu()), want)) << "host->device into a strided view (or outside it)";

  // device (strided) -> device (strided) with a dtype change, f32 -> bf16
  Tensor dst = Tensor::zeros({20, 24}, DType::BF16, gpu());
  Tensor dst_view = dst.slice(1, 2, 14);
  dst_view.copy_(dev.transpose(0, 1));
  Tensor dst_want = Tensor::zeros({20, 24}, DType::BF16);
  Tensor dst_want_view = dst_want.slice(1, 2, 14);
  dst_want_view.copy_(src.transpose(0, 1));
  EXPECT_TRUE(same_bytes(dst.to(Device::cpu()), dst_want)) << "device f32 -> bf16 into a strided view";
}

TEST(TensorGpu, ConversionsRoundLikeTheCpu) {
  // Values that exercise round-to-nearest-even at the bf16 and f16 boundaries.
  Tensor src = random_tensor({4096}, 203, -1000, 1000);
  for (int64_t i = 0; i < 16; ++i) src.data<float>()[i] = 1.0f + static_cast<float>(i) * std::ldexp(1.0f, -9);
  for (const DType dt : {DType::BF16, DType::F16}) {
    const Tensor want = src.to(dt);
    EXPECT_TRUE(same_bytes(src.to(gpu()).to(dt).to(Device::cpu()), want))
        << "f32 -> " << dtype_name(dt) << " on device";
    EXPECT_TRUE(same_bytes(want.to(gpu()).to(DType::F32).to(Device::cpu()), want.to(DType::F32)))
        << dtype_name(dt) << " -> f32 on device";
  }
  const Tensor ints = exact_values({999}, DType::I32);
  EXPECT_TRUE(same_bytes(ints.to(gpu()).to(DType::F32).to(Device::cpu()), ints.to(DType::F32))) << "i32 -> f32";
}

TEST(TensorGpu, FillWritesOnlyTheView) {
  for (const DType dt : {DType::F32, DType::BF16, DType::I32}) {
    Tensor dev = Tensor::zeros({8, 16}, dt, gpu());
    Tensor view = dev.slice(1, 3, 9).slice(0, 2, 7);
    view.fill_(2.5);
    Tensor want = Tensor::zeros({8, 16}, dt);
    Tensor want_view = want.slice(1, 3, 9).slice(0, 2, 7);
    want_view.fill_(2.5);
    EXPECT_TRUE(same_bytes(dev.to(Device::cpu()), want)) << dtype_name(dt);
  }
}

// ---- caching allocator --------------------------------------------------------------------

TEST(CudaAllocator, ReusesAFreedBlockOfTheSameSize) {
  Allocator& alloc = cuda_allocator(0);
  alloc.empty_cache();
  const size_t before = alloc.stats().allocations;
  void* first = nullptr;
  {
    Tensor t = Tensor::empty({1 << 20}, DType::F32, gpu());
    first = t.raw_data();
  }
  EXPECT_GE(alloc.stats().cached_bytes, size_t{4} << 20) << "a freed 4 MiB block is kept";
  Tensor again = Tensor::empty({1 << 20}, DType::F32, gpu());
  EXPECT_EQ(again.raw_data(), first) << "same size on the same stream takes the cached block";
  EXPECT_EQ(alloc.stats().allocations, before + 2);
}

TEST(CudaAllocator, SmallRequestsDoNotTakeALargeCachedBlock) {
  Allocator& alloc = cuda_allocator(0);
  alloc.empty_cache();
  void* big = nullptr;
  { big = Tensor::empty({int64_t{16} << 20}, DType::F32, gpu()).raw_data(); }  // 64 MiB, freed at once
  const Tensor small = Tensor::empty({int64_t{1} << 20}, DType::F32, gpu());  // 4 MiB
  EXPECT_NE(small.raw_data(), big) << "a 4 MiB tensor must not pin a cached 64 MiB block";
  const Tensor big_again = Tensor::empty({int64_t{16} << 20}, DType::F32, gpu());
  EXPECT_EQ(big_again.raw_data(), big);
}

TEST(CudaAllocator, LiveAndPeakCountersFollowTensors) {
  Allocator& alloc = cuda_allocator(0);
  alloc.reset_peak();
  const MemoryStats s0 = alloc.stats();
  const size_t bytes = size_t{3} << 20;
  {
    std::vector<Tensor> ts;
    for (int i = 0; i < 3; ++i) ts.push_back(Tensor::empty({static_cast<int64_t>(bytes / 4)}, DType::F32, gpu()));
    EXPECT_EQ(alloc.stats().current_bytes, s0.current_bytes + 3 * bytes) << "requested bytes, not rounded ones";
  }
  const MemoryStats s1 = alloc.stats();
  EXPECT_EQ(s1.current_bytes, s0.current_bytes);
  EXPECT_EQ(s1.peak_bytes, s0.current_bytes + 3 * bytes);
  alloc.reset_peak();
  EXPECT_EQ(alloc.stats().peak_bytes, alloc.stats().current_bytes);
}

// record_stream: a block another stream still uses is not handed out again until that stream
// has passed the point where the tensor died. The side stream is held at a host callback until
// the test releases it, so "still in use" is certain, not a race. Nothing in between may wait
// for the side stream (a cudaMalloc that synchronised would): a spare cached block of the same
// size serves the allocation made meanwhile, and the hold gives up after 20 s instead of hanging.
struct Hold {
  std::atomic<bool> released{false};
  std::atomic<bool> gave_up{false};
};

void CUDART_CB hold_stream(void* arg) {
  Hold* h = static_cast<Hold*>(arg);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!h->released.load()) {
    if (std::chrono::steady_clock::now() > deadline) {
      h->gave_up = true;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

TEST(CudaAllocator, RecordStreamHoldsTheBlockUntilTheOtherStreamIsDone) {
  Allocator& alloc = cuda_allocator(0);
  alloc.empty_cache();
  cuda::DeviceGuard guard(0);
  cudaStream_t side = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking), cudaSuccess);
  const int64_t n = 1 << 18;  // 1 MiB
  Hold hold;
  void* used_by_side = nullptr;
  void* spare_block = nullptr;
  {
    Tensor t = Tensor::empty({n}, DType::F32, gpu());
    { spare_block = Tensor::empty({n}, DType::F32, gpu()).raw_data(); }  // cached at once
    used_by_side = t.raw_data();
    ANVIL_CUDA_CHECK(cudaLaunchHostFunc(side, hold_stream, &hold));
    ANVIL_CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, t.nbytes(), side));  // queued behind the hold
    cuda::record_stream(t, side);
  }  // t dies while the side stream has not even started its memset
  const Tensor during = Tensor::empty({n}, DType::F32, gpu());
  const void* during_block = during.raw_data();
  // The allocator polled the side stream's event (not ready): that must not leave
  // cudaErrorNotReady behind for the next launch check to report.
  EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess) << cudaGetErrorName(cudaPeekAtLastError());
  hold.released = true;
  ANVIL_CUDA_CHECK(cudaStreamSynchronize(side));
  ASSERT_FALSE(hold.gave_up) << "something waited for the held side stream (a synchronising CUDA call between "
                                "the tensor's death and the next allocation)";
  EXPECT_NE(during_block, used_by_side) << "the block was handed out while another stream still had work on it";
  EXPECT_EQ(during_block, spare_block) << "the allocation made meanwhile should take the spare cached block";
  const Tensor after = Tensor::empty({n}, DType::F32, gpu());
  EXPECT_EQ(after.raw_data(), used_by_side) << "once the side stream is done the block returns to the cache";
  ANVIL_CUDA_CHECK(cudaStreamDestroy(side));
}

TEST(CudaDevice, ReportsAtLeastOneDeviceAndNoReason) {
  EXPECT_TRUE(cuda_built());
  EXPECT_GE(cuda_device_count(), 1);
  EXPECT_EQ(cuda_unavailable_reason(), "");
}

}  // namespace
