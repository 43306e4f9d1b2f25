// Philox-4x32-10 as one inline function that compiles for the host and for CUDA devices, so the
// CPU (core/rng.cpp) and the CUDA kernels that draw by logical element (kernels/cuda/dropout.cu)
// share one definition and produce the same bits.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define ANVIL_HOST_DEVICE __host__ __device__
#else
#define ANVIL_HOST_DEVICE
#endif

namespace anvil::philox {

// The 10 rounds on counter c with key (k0, k1), in place (Salmon et al. 2011).
ANVIL_HOST_DEVICE inline void rounds4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c[0], p1 = static_cast<uint64_t>(kMul1) * c[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
  }
}

// PhiloxStream's counter layout: (index low, index high, stream, step), key = the seed's halves.
// Returns word 0 of the block.
ANVIL_HOST_DEVICE inline uint32_t stream_u32(uint64_t seed, uint32_t stream, uint32_t step, uint64_t index) {
  uint32_t c[4] = {static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), stream, step};
  rounds4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return c[0];
}

// A uniform in [0, 1) from the top 24 bits of a word (exact in f32).
ANVIL_HOST_DEVICE inline float uniform24(uint32_t word) { return static_cast<float>(word >> 8) * (1.0f / 16777216.0f); }

}  // namespace anvil::philox
