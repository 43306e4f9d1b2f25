#include "core/rng.h"

#include <cmath>

#include "core/philox.h"

namespace anvil {

PhiloxBlock philox4x32_10(PhiloxBlock c, std::array<uint32_t, 2> k) {
  philox::rounds4x32_10(c.data(), k[0], k[1]);
  return c;
}

PhiloxBlock PhiloxStream::block(uint64_t index) const {
  return philox4x32_10({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), stream_, step_},
                       {static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32)});
}

float PhiloxStream::uniform(uint64_t index) const {
  return philox::uniform24(u32(index));
}

float PhiloxStream::normal(uint64_t index) const {
  const PhiloxBlock b = block(index);
  // u1 in (0, 1] so log() is finite; u2 in [0, 1).
  const double u1 = (static_cast<double>(b[0]) + 1.0) * (1.0 / 4294967296.0);
  const double u2 = static_cast<double>(b[1]) * (1.0 / 4294967296.0);
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

void PhiloxStream::fill_uniform(Tensor& t, float low, float high, uint64_t first_index) const {
  ANVIL_CHECK(t.is_contiguous(), "fill_uniform needs a contiguous tensor, got ", t.describe());
  float* p = t.data<float>();
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) p[i] = low + (high - low) * uniform(first_index + i);
}

void PhiloxStream::fill_normal(Tensor& t, float mean, float stddev, uint64_t first_index) const {
  ANVIL_CHECK(t.is_contiguous(), "fill_normal needs a contiguous tensor, got ", t.describe());
  float* p = t.data<float>();
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) p[i] = mean + stddev * normal(first_index + i);
}

uint32_t stream_id(const char* name) {
  uint32_t h = 2166136261u;
  for (const char* c = name; *c; ++c) {
    h ^= static_cast<uint8_t>(*c);
    h *= 16777619u;
  }
  return h;
}

}  // namespace anvil
