#include "core/allocator.h"

#include <cstdlib>
#include <new>

#include "core/error.h"

namespace anvil {

MemoryStats Allocator::stats() const {
  return {current_.load(), peak_.load(), allocations_.load()};
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
  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    const size_t rounded = (bytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
    void* ptr = std::aligned_alloc(kCpuAlignment, rounded);
    ANVIL_CHECK(ptr != nullptr, "out of host memory: could not allocate ", bytes,
                " bytes — reduce the batch size or sequence length");
    record_alloc(bytes);
    return ptr;
  }
  void deallocate(void* ptr, size_t bytes) override {
    if (ptr == nullptr) return;
    std::free(ptr);
    record_free(bytes);
  }
  Device device() const override { return Device::cpu(); }
};

}  // namespace

Allocator& cpu_allocator() {
  static CpuAllocator instance;
  return instance;
}

Allocator& allocator_for(Device device) {
  ANVIL_CHECK(device.is_cpu(), "no allocator for device ", device.str(),
              " — this build has only the CPU backend; rebuild with nvcc present for CUDA");
  return cpu_allocator();
}

}  // namespace anvil
