// Device memory allocators with live/peak byte counters (read by metrics and memory tests).
#pragma once
#include <atomic>
#include <cstddef>

#include "core/device.h"

namespace anvil {

struct MemoryStats {
  size_t current_bytes = 0;  // bytes handed out and not yet returned
  size_t peak_bytes = 0;     // high-water mark of current_bytes since the last reset_peak()
  size_t allocations = 0;    // number of allocate() calls since start
  size_t cached_bytes = 0;   // returned blocks kept for reuse (not counted in current_bytes)
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* ptr, size_t bytes) = 0;
  virtual Device device() const = 0;

  MemoryStats stats() const;
  void reset_peak();  // peak := current
  // Returns cached free blocks to the system (allocators that cache override it).
  virtual void empty_cache() {}

 protected:
  void record_alloc(size_t bytes);
  void record_free(size_t bytes);
  virtual size_t cached() const { return 0; }

 private:
  std::atomic<size_t> current_{0};
  std::atomic<size_t> peak_{0};
  std::atomic<size_t> allocations_{0};
};

constexpr size_t kCpuAlignment = 64;  // a cache line; also what AVX-512 loads like

// The process-wide CPU allocator (64-byte aligned). Blocks of 256 KiB and more are
// kept on per-size free lists when released and handed out again: a training step
// allocates the same activation sizes every time, and fresh pages from the kernel
// (page faults, zeroing) cost ~5% of a CPU step. Smaller blocks go to malloc,
// which caches them itself.
Allocator& cpu_allocator();
// The allocator for a device (CUDA: core/cuda/allocator.cpp; throws in a CPU-only build).
Allocator& allocator_for(Device device);

}  // namespace anvil
