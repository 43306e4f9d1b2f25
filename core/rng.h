// Counter-based RNG: Philox-4x32-10 keyed by (seed, stream, step), counted by the
// logical element index, so any device or parallel layout draws the same numbers. The rounds
// themselves are core/philox.h, shared with the CUDA kernels that draw.
#pragma once
#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace anvil {

using PhiloxBlock = std::array<uint32_t, 4>;

// The raw Philox-4x32-10 bijection (Salmon et al. 2011; Random123 known answers).
PhiloxBlock philox4x32_10(PhiloxBlock counter, std::array<uint32_t, 2> key);

// Draws for one purpose ("stream": init of a named param, dropout, shuffling, ...)
// at one step. Element i always gets the same number for the same (seed, stream, step).
class PhiloxStream {
 public:
  PhiloxStream(uint64_t seed, uint32_t stream, uint32_t step = 0)
      : seed_(seed), stream_(stream), step_(step) {}

  uint64_t seed() const { return seed_; }
  uint32_t stream() const { return stream_; }
  uint32_t step() const { return step_; }

  PhiloxBlock block(uint64_t index) const;
  uint32_t u32(uint64_t index) const { return block(index)[0]; }
  float uniform(uint64_t index) const;  // in [0, 1), 24 random bits
  float normal(uint64_t index) const;   // standard normal via Box-Muller on words 0, 1

  // Fills a contiguous f32 tensor; element i of the tensor uses index first_index + i.
  void fill_uniform(Tensor& t, float low, float high, uint64_t first_index = 0) const;
  void fill_normal(Tensor& t, float mean, float stddev, uint64_t first_index = 0) const;

 private:
  uint64_t seed_;
  uint32_t stream_;
  uint32_t step_;
};

// A stable 32-bit stream id for a name (FNV-1a), e.g. a parameter's dotted name.
uint32_t stream_id(const char* name);

}  // namespace anvil
