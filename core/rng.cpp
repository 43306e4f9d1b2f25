#include "core/rng.h"

#include <cmath>

namespace anvil {

namespace {
constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;

inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}
}  // namespace

PhiloxBlock philox4x32_10(PhiloxBlock c, std::array<uint32_t, 2> k) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k[0] += kWeyl0;
      k[1] += kWeyl1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c[0], hi0, lo0);
    mulhilo(kMul1, c[2], hi1, lo1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
  }
  return c;
}

PhiloxBlock PhiloxStream::block(uint64_t index) const {
  return philox4x32_10({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), stream_, step_},
                       {static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32)});
}

float PhiloxStream::uniform(uint64_t index) const {
  return static_cast<float>(u32(index) >> 8) * (1.0f / 16777216.0f);
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
