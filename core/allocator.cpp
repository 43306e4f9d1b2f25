#include "core/allocator.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "core/cuda_device.h"
#include "core/error.h"

namespace anvil {

MemoryStats Allocator::stats() const {
  return {current_.load(), peak_.load(), allocations_.load(), cached()};
}

void Allocator::reset_peak() { peak_.store(current_.load()); }

void Allocator::record_alloc(size_t bytes) {
  const size_t now = current_.fetch_add(bytes) + bytes;
  size_t peak = peak_.load();
  while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
  }
  allocations_.fetch_add(1);
}

void Allocator::record_free(size_t bytes) { current_.fetch_sub(bytes); }

namespace {

class CpuAllocator final : public Allocator {
 public:
  static constexpr size_t kCacheMin = size_t{256} << 10;   // smaller blocks: malloc's own caching
  static constexpr size_t kCacheGranule = size_t{64} << 10;

  ~CpuAllocator() override { empty_cache(); }

  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    const size_t block = block_size(bytes);
    void* ptr = nullptr;
    if (block >= kCacheMin) {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(block);
      if (it != free_.end() && !it->second.empty()) {
        ptr = it->second.back();
        it->second.pop_back();
        cached_ -= block;
      }
    }
    if (ptr == nullptr) ptr = std::aligned_alloc(kCpuAlignment, block);
    ANVIL_CHECK(ptr != nullptr, "out of host memory: could not allocate ", bytes,
                " bytes — reduce the batch size or sequence length");
    record_alloc(bytes);
    return ptr;
  }
  void deallocate(void* ptr, size_t bytes) override {
    if (ptr == nullptr) return;
    record_free(bytes);
    const size_t block = block_size(bytes);
    if (block < kCacheMin) {
      std::free(ptr);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    free_[block].push_back(ptr);
    cached_ += block;
  }
  void empty_cache() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [size, blocks] : free_)
      for (void* p : blocks) std::free(p);
    free_.clear();
    cached_ = 0;
  }
  Device device() const override { return Device::cpu(); }

 protected:
  size_t cached() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  static size_t block_size(size_t bytes) {
    const size_t granule = bytes >= kCacheMin ? kCacheGranule : kCpuAlignment;
    return (bytes + granule - 1) / granule * granule;
  }
  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
};

}  // namespace

Allocator& cpu_allocator() {
  static CpuAllocator instance;
  return instance;
}

Allocator& allocator_for(Device device) {
  return device.is_cuda() ? cuda_allocator(device.index) : cpu_allocator();
}

}  // namespace anvil
