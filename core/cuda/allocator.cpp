// The CUDA caching allocator: cudaMalloc/cudaFree synchronise the device and cost tens of
// microseconds, and a training step allocates the same activation sizes every time, so
// released blocks are kept and handed out again.
//
// Stream-aware: a block belongs to the stream that was current when it was allocated, and a
// released block is reused only by allocations on that same stream — work queued on one
// stream runs in order, so the next user cannot overtake the last. A block another stream
// also used (record_stream) is held back until an event recorded on each such stream at
// release time has completed.
//
// Size classes: requests are rounded up to 512 B below 1 MiB and to 2 MiB above; a free
// block serves a request of 1 MiB or more when it is at most 25% (or 2 MiB) larger, one
// below 1 MiB when it is a small block at most twice its size, so large blocks are not
// wasted on small tensors. On cudaMalloc failure every cached block is released and the
// allocation retried once before reporting out-of-memory with the counters.
#include <algorithm>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/cuda/runtime.h"
#include "core/cuda_device.h"

namespace anvil {
namespace {

constexpr size_t kSmallGranule = 512;
constexpr size_t kLargeGranule = size_t{2} << 20;
constexpr size_t kSmallLimit = size_t{1} << 20;

size_t round_size(size_t bytes) {
  const size_t g = bytes < kSmallLimit ? kSmallGranule : kLargeGranule;
  return (bytes + g - 1) / g * g;
}

class CudaCachingAllocator final : public Allocator {
 public:
  explicit CudaCachingAllocator(int device) : device_(device) {}
  // Cached blocks are not freed at exit: the driver reclaims them, and cudaFree during
  // static destruction can run after the runtime has shut down.
  ~CudaCachingAllocator() override = default;

  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    const size_t size = round_size(bytes);
    cudaStream_t stream = cuda::current_stream(device_);
    std::lock_guard<std::mutex> lock(mutex_);
    collect_pending();
    auto [ptr, held] = take_free(stream, size);
    if (ptr == nullptr) {
      ptr = fresh(size, bytes);
      held = size;
    }
    live_[ptr] = Block{held, stream, {}};
    record_alloc(bytes);
    return ptr;
  }

  void deallocate(void* ptr, size_t bytes) override {
    if (ptr == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(ptr);
    if (it == live_.end()) return;  // not ours (cannot happen through Storage)
    Block block = std::move(it->second);
    live_.erase(it);
    record_free(bytes);
    if (block.other_streams.empty()) {
      release_to_cache(ptr, block);
      return;
    }
    // Held until every other stream that used it has passed this point.
    Pending p{ptr, block, {}};
    cuda::DeviceGuard guard(device_);
    for (cudaStream_t s : block.other_streams) {
      p.events.emplace_back();
      p.events.back().record(s);
    }
    pending_.push_back(std::move(p));
  }

  void record_stream(void* ptr, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(ptr);
    ANVIL_CHECK(it != live_.end(), "record_stream: the pointer was not allocated by cuda:", device_, "'s allocator");
    if (stream == it->second.stream) return;
    for (cudaStream_t s : it->second.other_streams)
      if (s == stream) return;
    it->second.other_streams.push_back(stream);
  }

  void empty_cache() override {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached();
  }

  Device device() const override { return Device::cuda(device_); }

 protected:
  size_t cached() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  struct Block {
    size_t size = 0;  // rounded size actually held
    cudaStream_t stream = nullptr;
    std::vector<cudaStream_t> other_streams;
  };
  struct Pending {
    void* ptr;
    Block block;
    std::vector<cuda::Event> events;
  };
  using FreeList = std::multimap<size_t, void*>;  // size -> block, per stream

  // A cached block of this stream that fits `size` without wasting much: {ptr, its size}.
  std::pair<void*, size_t> take_free(cudaStream_t stream, size_t size) {
    FreeList& list = free_[stream];
    auto it = list.lower_bound(size);
    // Small requests (< 1 MiB) stay among small blocks: size + 2 MiB would let a 512 B
    // scratch tensor pin a 2 MiB activation block.
    const size_t limit =
        size < kSmallLimit ? std::min(2 * size, kSmallLimit) : std::max(size + size / 4, size + kLargeGranule);
    if (it == list.end() || it->first > limit) return {nullptr, 0};
    const std::pair<void*, size_t> block{it->second, it->first};
    cached_ -= it->first;
    list.erase(it);
    return block;
  }

  void* fresh(size_t size, size_t requested) {
    cuda::DeviceGuard guard(device_);
    void* ptr = nullptr;
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached();
      err = cudaMalloc(&ptr, size);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      const MemoryStats s = Allocator::stats();
      size_t free_bytes = 0, total_bytes = 0;
      cudaMemGetInfo(&free_bytes, &total_bytes);
      ANVIL_FAIL("CUDA out of memory on cuda:", device_, ": could not allocate ", requested, " bytes (",
                 cudaGetErrorString(err), "); anvil holds ", s.current_bytes, " bytes in tensors, peak ",
                 s.peak_bytes, "; the device has ", free_bytes, " of ", total_bytes,
                 " bytes free — reduce data.micro_batch_size or data.seq_len, shard the optimizer (parallel.zero), "
                 "or add tensor/pipeline parallelism");
    }
    return ptr;
  }

  void release_to_cache(void* ptr, const Block& block) {
    free_[block.stream].emplace(block.size, ptr);
    cached_ += block.size;
  }

  void collect_pending() {
    for (size_t i = 0; i < pending_.size();) {
      bool done = true;
      for (const cuda::Event& e : pending_[i].events) done = done && e.query();
      if (!done) {
        ++i;
        continue;
      }
      release_to_cache(pending_[i].ptr, pending_[i].block);
      pending_[i] = std::move(pending_.back());
      pending_.pop_back();
    }
  }

  // Frees every cached block (after the work that may still use pending ones has finished).
  void release_cached() {
    cuda::DeviceGuard guard(device_);
    for (Pending& p : pending_)
      for (cuda::Event& e : p.events) e.synchronize();
    collect_pending();
    for (auto& [stream, list] : free_) {
      // A block freed on a stream may still be read by that stream's queued kernels.
      cudaStreamSynchronize(stream);
      for (auto& [size, ptr] : list) cudaFree(ptr);
    }
    free_.clear();
    cached_ = 0;
  }

  const int device_;
  mutable std::mutex mutex_;
  std::unordered_map<void*, Block> live_;
  std::unordered_map<cudaStream_t, FreeList> free_;
  std::vector<Pending> pending_;
  size_t cached_ = 0;
};

CudaCachingAllocator& caching_allocator(int index) {
  static std::mutex mutex;
  static std::map<int, CudaCachingAllocator*> allocators;  // leaked on purpose, see the destructor
  std::lock_guard<std::mutex> lock(mutex);
  auto& a = allocators[index];
  if (a == nullptr) {
    const int count = cuda_device_count();
    ANVIL_CHECK(index >= 0 && index < count, "CUDA device cuda:", index, " does not exist (", count,
                " visible) — check CUDA_VISIBLE_DEVICES and the local rank mapping");
    a = new CudaCachingAllocator(index);
  }
  return *a;
}

}  // namespace

Allocator& cuda_allocator(int index) { return caching_allocator(index); }

namespace cuda {
void record_stream(const Tensor& t, cudaStream_t stream) {
  if (!t.defined() || !t.device().is_cuda() || t.storage()->data() == nullptr) return;
  caching_allocator(t.device().index).record_stream(t.storage()->data(), stream);
}
}  // namespace cuda

}  // namespace anvil
