// The AVX2/FMA kernels of the quantized products (kernels/cpu/quant_matmul.cpp chooses them at run
// time). Eight codes at a time become eight floats in a register: their 4 (4-bit) or 2 (2-bit)
// bytes are broadcast to every lane and shifted right by a per-lane amount, leaving code j in the
// low bits of lane j (the first element sits in the high bits of its byte); vpermps then looks
// the codes up in the group's value table: 16 entries in two registers for 4-bit codes (bit 3
// picks the register through a blend), 4 entries repeated twice for 2-bit ones (vpermps reads
// 3 index bits, so the next code's low bit lands on the copy). These serve int2 and blocks the
// chunked 4-bit kernels further down (the fast path for int4 and nf4) do not take.
//
// Every function carries target("avx2,fma") and nothing here is inline in a header or a
// template from one, so no AVX2 instruction can leak into code the scalar path shares.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "kernels/cpu/quant_matmul.h"

#define ANVIL_AVX2 __attribute__((target("avx2,fma")))

namespace anvil::kernels::cpu::avx2 {
namespace {

struct Table {
  __m256 lo, hi;  // codes 0..7 and 8..15 (2-bit: codes 0..3 twice, hi unused)
};

// Group g of row o's value table, the same f32 operations as PackedWeight::group_table.
template <int BITS>
ANVIL_AVX2 inline Table group_table(const PackedWeight& w, int64_t o, int64_t g) {
  const int64_t b = o * w.groups + g;
  if (w.nf4) {
    float a;
    if (w.absmax != nullptr) {
      a = w.absmax[b];
    } else {
      a = double_quant_absmax(w.dynamic_map[w.absmax_codes[b]], w.absmax_scales[b / kDoubleQuantBlock], w.absmax_offset);
    }
    const __m256 va = _mm256_set1_ps(a);
    return {_mm256_mul_ps(_mm256_loadu_ps(w.nf4_table), va), _mm256_mul_ps(_mm256_loadu_ps(w.nf4_table + 8), va)};
  }
  const __m256 s = _mm256_set1_ps(w.scales[b]), z = _mm256_set1_ps(w.zeros[b]);
  if (BITS == 4)
    return {_mm256_mul_ps(s, _mm256_sub_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), z)),
            _mm256_mul_ps(s, _mm256_sub_ps(_mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15), z))};
  const __m256 t = _mm256_mul_ps(s, _mm256_sub_ps(_mm256_setr_ps(0, 1, 2, 3, 0, 1, 2, 3), z));
  return {t, t};
}

// The eight values whose codes start at byte p (BITS bytes hold eight codes).
template <int BITS>
ANVIL_AVX2 inline __m256 decode8(const uint8_t* p, const Table& t) {
  if (BITS == 4) {
    uint32_t u;
    std::memcpy(&u, p, 4);
    const __m256i v =
        _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(u)), _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24));
    const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(v, 28));  // the blend reads the sign bit
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.lo, v), _mm256_permutevar8x32_ps(t.hi, v), bit3);
  }
  uint16_t u;
  std::memcpy(&u, p, 2);
  const __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(u), _mm256_setr_epi32(6, 4, 2, 0, 14, 12, 10, 8));
  return _mm256_permutevar8x32_ps(t.lo, v);
}

// The eight codes starting at byte p as floats (intN: ŵ = s·q − s·z is affine in the code, so
// the products need no table).
template <int BITS>
ANVIL_AVX2 inline __m256 codes8(const uint8_t* p) {
  if (BITS == 4) {
    uint32_t u;
    std::memcpy(&u, p, 4);
    const __m256i v =
        _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(u)), _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24));
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
  }
  uint16_t u;
  std::memcpy(&u, p, 2);
  const __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(u), _mm256_setr_epi32(6, 4, 2, 0, 14, 12, 10, 8));
  return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(3)));
}

ANVIL_AVX2 inline float horizontal_sum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// y[m, o] (+)= x[m, :] · Ŵ[o, :] for M rows. Each row keeps A independent sums so one or two rows
// still have enough multiply-adds in flight to hide their latency.
template <int BITS, int M>
ANVIL_AVX2 void gemv_rows(const PackedWeight& w, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t o0,
                          int64_t o1, bool accumulate) {
  constexpr int A = M == 1 ? 4 : (M <= 4 ? 2 : 1);
  for (int64_t o = o0; o < o1; ++o) {
    __m256 acc[M][A];
    for (int m = 0; m < M; ++m)
      for (int a = 0; a < A; ++a) acc[m][a] = _mm256_setzero_ps();
    const uint8_t* p = w.codes + o * w.row_bytes;
    int64_t k = 0;
    for (int64_t g = 0; g < w.groups; ++g) {
      const Table t = group_table<BITS>(w, o, g);
      const int64_t end = k + w.block;
      for (; k + 8 * A <= end; k += 8 * A, p += BITS * A)
        for (int a = 0; a < A; ++a) {
          const __m256 v = decode8<BITS>(p + a * BITS, t);
          for (int m = 0; m < M; ++m)
            acc[m][a] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * ldx + k + 8 * a), v, acc[m][a]);
        }
      for (; k < end; k += 8, p += BITS) {
        const __m256 v = decode8<BITS>(p, t);
        for (int m = 0; m < M; ++m) acc[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * ldx + k), v, acc[m][0]);
      }
    }
    for (int m = 0; m < M; ++m) {
      __m256 s = acc[m][0];
      for (int a = 1; a < A; ++a) s = _mm256_add_ps(s, acc[m][a]);
      const float sum = horizontal_sum(s);
      float& out = y[m * ldy + o];
      out = accumulate ? out + sum : sum;
    }
  }
}

// gemv_rows for intN: per group Σ_k x_k ŵ_k = s·Σ_k x_k q_k − s·z·Σ_k x_k, with the codes converted
// rather than looked up (half the instructions of decode8) and Σ_k x_k given per (row, group).
template <int BITS, int M>
ANVIL_AVX2 void gemv_rows_int(const PackedWeight& w, const float* x, int64_t ldx, const float* x_group_sums,
                              float* y, int64_t ldy, int64_t o0, int64_t o1, bool accumulate) {
  constexpr int A = M == 1 ? 4 : (M <= 4 ? 2 : 1);
  for (int64_t o = o0; o < o1; ++o) {
    __m256 total[M];
    float zero_terms[M];
    for (int m = 0; m < M; ++m) {
      total[m] = _mm256_setzero_ps();
      zero_terms[m] = 0.0f;
    }
    const uint8_t* p = w.codes + o * w.row_bytes;
    int64_t k = 0;
    for (int64_t g = 0; g < w.groups; ++g) {
      __m256 acc[M][A];
      for (int m = 0; m < M; ++m)
        for (int a = 0; a < A; ++a) acc[m][a] = _mm256_setzero_ps();
      const int64_t end = k + w.block;
      for (; k + 8 * A <= end; k += 8 * A, p += BITS * A)
        for (int a = 0; a < A; ++a) {
          const __m256 q = codes8<BITS>(p + a * BITS);
          for (int m = 0; m < M; ++m)
            acc[m][a] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * ldx + k + 8 * a), q, acc[m][a]);
        }
      for (; k < end; k += 8, p += BITS) {
        const __m256 q = codes8<BITS>(p);
        for (int m = 0; m < M; ++m) acc[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * ldx + k), q, acc[m][0]);
      }
      const float s = w.scales[o * w.groups + g], sz = s * w.zeros[o * w.groups + g];
      const __m256 vs = _mm256_set1_ps(s);
      for (int m = 0; m < M; ++m) {
        __m256 sum = acc[m][0];
        for (int a = 1; a < A; ++a) sum = _mm256_add_ps(sum, acc[m][a]);
        total[m] = _mm256_fmadd_ps(vs, sum, total[m]);
        zero_terms[m] += sz * x_group_sums[m * w.groups + g];
      }
    }
    for (int m = 0; m < M; ++m) {
      const float sum = horizontal_sum(total[m]) - zero_terms[m];
      float& out = y[m * ldy + o];
      out = accumulate ? out + sum : sum;
    }
  }
}

// dx[m, k] (+)= Σ_o dy[m, o] Ŵ[o, k] over the columns of groups [g0, g1), summed in dx itself:
// the strip's M rows stay in L1 while the output rows stream past.
template <int BITS, int M>
ANVIL_AVX2 void input_grad_strip(const PackedWeight& w, const float* dy, int64_t lddy, float* dx, int64_t lddx,
                                 int64_t g0, int64_t g1, bool accumulate) {
  constexpr int64_t kPrefetchRows = 8;  // the strip of a later row is fetched while this one computes
  const int64_t k0 = g0 * w.block, width = (g1 - g0) * w.block;
  const int64_t strip_bytes = width * BITS / 8, strip_offset = k0 * BITS / 8;
  if (!accumulate)
    for (int m = 0; m < M; ++m)
      for (int64_t k = 0; k < width; k += 8) _mm256_storeu_ps(dx + m * lddx + k0 + k, _mm256_setzero_ps());
  for (int64_t o = 0; o < w.out; ++o) {
    const uint8_t* p = w.codes + o * w.row_bytes + strip_offset;
    if (o + kPrefetchRows < w.out)
      for (int64_t off = 0; off < strip_bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchRows * w.row_bytes + off), _MM_HINT_T0);
    __m256 d[M];
    for (int m = 0; m < M; ++m) d[m] = _mm256_set1_ps(dy[m * lddy + o]);
    float* col = dx + k0;
    for (int64_t g = g0; g < g1; ++g) {
      const Table t = group_table<BITS>(w, o, g);
      for (int64_t e = 0; e < w.block; e += 8, p += BITS, col += 8) {
        const __m256 v = decode8<BITS>(p, t);
        for (int m = 0; m < M; ++m) {
          float* out = col + m * lddx;
          _mm256_storeu_ps(out, _mm256_fmadd_ps(d[m], v, _mm256_loadu_ps(out)));
        }
      }
    }
  }
}

template <int BITS>
ANVIL_AVX2 void dequantize_rows(const PackedWeight& w, int64_t o0, int64_t o1, int64_t g0, int64_t g1, float* out,
                                int64_t ld) {
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* p = w.codes + o * w.row_bytes + g0 * w.block * BITS / 8;
    float* row = out + (o - o0) * ld;
    for (int64_t g = g0; g < g1; ++g) {
      const Table t = group_table<BITS>(w, o, g);
      for (int64_t e = 0; e < w.block; e += 8, p += BITS, row += 8) _mm256_storeu_ps(row, decode8<BITS>(p, t));
    }
  }
}

// ---- Chunked 4-bit kernels (int4 with block % 32 == 0, nf4 with block % 64 == 0) ----
// They decode a whole load of packed bytes at once and leave the codes in an order of their own
// (below); x for the forward is permuted into that order once per call (chunk_order_inputs) and the
// input grad sums its strip in that order and un-permutes it once at the end.
//   int4: 8 bytes → vpmovzxbd → the high nibbles (elements 2j) and the low ones (2j+1) as two
//     vectors, converted to floats; ŵ = s·q − s·z is folded as for gemv_rows_int.
//   nf4: 32 bytes → the high and the low nibbles as 32 byte-codes each; vpshufb looks up each of
//     the four bytes of NF4[c] (four constant 16-entry tables), and two rounds of unpacks put the
//     bytes back together: 4 vectors of 8 floats per 32 codes, no per-group table. The absmax
//     scales each block's sum (Σ x·NF4[c])·absmax instead of each value.

// Element index (within its chunk) of lane i of vector v of a decoded chunk.
int64_t chunk_element(bool nf4, int64_t v, int64_t i) {
  if (!nf4) return 2 * i + v;  // v 0: high nibbles, 1: low nibbles
  const int64_t h = v / 4, q = v % 4;  // byte j of the 32: lanes 0-3 from the low 128 bits, 4-7 from the high
  return 2 * ((i / 4) * 16 + q * 4 + i % 4) + h;
}

struct Nf4Planes {
  __m256i b[4];  // byte k of NF4[c] at index c, in both 128-bit lanes
};

ANVIL_AVX2 inline Nf4Planes nf4_planes(const float* table) {
  alignas(32) uint8_t bytes[4][32];
  for (int c = 0; c < 16; ++c) {
    uint32_t u;
    std::memcpy(&u, table + c, 4);
    for (int k = 0; k < 4; ++k) bytes[k][c] = bytes[k][c + 16] = static_cast<uint8_t>(u >> (8 * k));
  }
  Nf4Planes p;
  for (int k = 0; k < 4; ++k) p.b[k] = _mm256_load_si256(reinterpret_cast<const __m256i*>(bytes[k]));
  return p;
}

// NF4[c] for the 32 byte-codes of c as 4 vectors (lane order: see chunk_element): four vpshufb
// give the four byte planes, two rounds of unpacks put each value's bytes back together.
ANVIL_AVX2 inline void nf4_decode32(const Nf4Planes& t, __m256i c, __m256 f[4]) {
  const __m256i b0 = _mm256_shuffle_epi8(t.b[0], c), b1 = _mm256_shuffle_epi8(t.b[1], c);
  const __m256i b2 = _mm256_shuffle_epi8(t.b[2], c), b3 = _mm256_shuffle_epi8(t.b[3], c);
  const __m256i lo01 = _mm256_unpacklo_epi8(b0, b1), hi01 = _mm256_unpackhi_epi8(b0, b1);
  const __m256i lo23 = _mm256_unpacklo_epi8(b2, b3), hi23 = _mm256_unpackhi_epi8(b2, b3);
  f[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(lo01, lo23));
  f[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(lo01, lo23));
  f[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(hi01, hi23));
  f[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(hi01, hi23));
}

// The high (elements 2j) and low (2j+1) nibbles of 32 packed bytes as byte-codes.
ANVIL_AVX2 inline void nibbles32(const uint8_t* p, __m256i& high, __m256i& low) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i mask = _mm256_set1_epi8(15);
  high = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
  low = _mm256_and_si256(v, mask);
}

// The 16 int4 codes of 8 packed bytes as floats: high nibbles (elements 2j), low ones (2j+1).
ANVIL_AVX2 inline void int4_decode16(const uint8_t* p, __m256& high, __m256& low) {
  const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  high = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
  low = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
}

// The scales of blocks [b0, b0 + n): intN s, nf4 absmax (double quant decoded eight at a time, with
// double_quant_absmax's two roundings: the empty asm keeps the product from fusing into an FMA).
ANVIL_AVX2 void block_scales(const PackedWeight& w, int64_t b0, int64_t n, float* out) {
  const float* direct = w.nf4 ? w.absmax : w.scales;
  if (direct != nullptr) {
    std::memcpy(out, direct + b0, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const int64_t b = b0 + i;
    if (b / kDoubleQuantBlock != (b + 7) / kDoubleQuantBlock) {  // two scales: one at a time
      for (int64_t j = i; j < i + 8; ++j) out[j] = w.nf4_absmax(b0 + j);
      continue;
    }
    const __m256i codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.absmax_codes + b)));
    __m256 product = _mm256_mul_ps(_mm256_i32gather_ps(w.dynamic_map, codes, 4),
                                   _mm256_set1_ps(w.absmax_scales[b / kDoubleQuantBlock]));
    __asm__("" : "+x"(product));
    _mm256_storeu_ps(out + i, _mm256_add_ps(product, _mm256_set1_ps(w.absmax_offset)));
  }
  for (; i < n; ++i) out[i] = w.nf4_absmax(b0 + i);
}

// y[m, o] (+)= xp[m, :] · Ŵ[o, :] for M rows of permuted x: per block, Σ xp·(NF4[c] or q), then
// nf4: · absmax; int4: · s, with − s·z·Σx per group.
template <bool NF4, int M>
ANVIL_AVX2 void gemv_chunked(const PackedWeight& w, const float* xp, int64_t ldx, const float* x_group_sums,
                             float* y, int64_t ldy, int64_t o0, int64_t o1, bool accumulate) {
  constexpr int A = M == 1 ? 4 : (M == 2 ? 2 : 1);  // independent sums per row (FMA latency), in registers
  const Nf4Planes planes = nf4_planes(w.nf4_table != nullptr ? w.nf4_table : nf4_values());
  // The row's block scales first, out of the decode loop (a double-quantized absmax costs a few
  // dependent scalar operations).
  std::unique_ptr<float[]> row_scales(new float[w.groups]);
  for (int64_t o = o0; o < o1; ++o) {
    block_scales(w, o * w.groups, w.groups, row_scales.get());
    __m256 total[M];
    float zero_terms[M];
    for (int m = 0; m < M; ++m) {
      total[m] = _mm256_setzero_ps();
      zero_terms[m] = 0.0f;
    }
    const uint8_t* p = w.codes + o * w.row_bytes;
    for (int64_t g = 0; g < w.groups; ++g) {
      const int64_t k0 = g * w.block;
      __m256 acc[M][A];
      for (int m = 0; m < M; ++m)
        for (int a = 0; a < A; ++a) acc[m][a] = _mm256_setzero_ps();
      if (NF4) {
        for (int64_t k = k0; k < k0 + w.block; k += 64, p += 32) {
          __m256i high, low;
          nibbles32(p, high, low);
          __m256 f[4];
          nf4_decode32(planes, high, f);
          for (int m = 0; m < M; ++m)
            for (int a = 0; a < 4; ++a)
              acc[m][a % A] = _mm256_fmadd_ps(_mm256_loadu_ps(xp + m * ldx + k + 8 * a), f[a], acc[m][a % A]);
          nf4_decode32(planes, low, f);
          for (int m = 0; m < M; ++m)
            for (int a = 0; a < 4; ++a)
              acc[m][a % A] =
                  _mm256_fmadd_ps(_mm256_loadu_ps(xp + m * ldx + k + 32 + 8 * a), f[a], acc[m][a % A]);
        }
      } else {
        for (int64_t k = k0; k < k0 + w.block; k += 32, p += 16) {
          __m256 f[4];
          int4_decode16(p, f[0], f[1]);
          int4_decode16(p + 8, f[2], f[3]);
          for (int m = 0; m < M; ++m)
            for (int a = 0; a < 4; ++a)
              acc[m][a % A] = _mm256_fmadd_ps(_mm256_loadu_ps(xp + m * ldx + k + 8 * a), f[a], acc[m][a % A]);
        }
      }
      const int64_t b = o * w.groups + g;
      const float s = row_scales[g];
      const __m256 vs = _mm256_set1_ps(s);
      for (int m = 0; m < M; ++m) {
        __m256 sum = acc[m][0];
        for (int a = 1; a < A; ++a) sum = _mm256_add_ps(sum, acc[m][a]);
        total[m] = _mm256_fmadd_ps(vs, sum, total[m]);
        if (!NF4) zero_terms[m] += s * w.zeros[b] * x_group_sums[m * w.groups + g];
      }
    }
    for (int m = 0; m < M; ++m) {
      const float sum = horizontal_sum(total[m]) - zero_terms[m];
      float& out = y[m * ldy + o];
      out = accumulate ? out + sum : sum;
    }
  }
}

// The input-grad strip of chunked_input_grad: acc [M, width] (permuted order) and, intN,
// zero_terms [M, groups] of groups [g0, g1).
struct Strip {
  int64_t g0, g1, groups, width;
  float* acc;
  float* zero_terms;
  float* scales;  // [R, groups] scratch for the rows' block scales
};

// Adds output rows [o, o + R) to the strip: their R contributions are summed in registers and
// added to the buffer once.
template <bool NF4, int M, int R>
ANVIL_AVX2 inline void strip_rows(const PackedWeight& w, const Nf4Planes& planes, const float* dy, int64_t lddy,
                                  int64_t o, const Strip& st) {
  for (int r = 0; r < R; ++r) block_scales(w, (o + r) * w.groups + st.g0, st.groups, st.scales + r * st.groups);
  for (int64_t g = st.g0; g < st.g1; ++g) {
    const int64_t gi = g - st.g0;
    float d[M][R];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) {
        d[m][r] = dy[m * lddy + o + r] * st.scales[r * st.groups + gi];
        if (!NF4) st.zero_terms[m * st.groups + gi] += d[m][r] * w.zeros[(o + r) * w.groups + g];
      }
    const uint8_t* p = w.codes + o * w.row_bytes + g * w.block / 2;
    float* acc = st.acc + gi * w.block;
    if (NF4) {
      for (int64_t e = 0; e < w.block; e += 64)
        for (int half = 0; half < 2; ++half) {
          __m256 t[M][4];
          for (int m = 0; m < M; ++m)
            for (int a = 0; a < 4; ++a) t[m][a] = _mm256_setzero_ps();
          for (int r = 0; r < R; ++r) {
            __m256i high, low;
            nibbles32(p + r * w.row_bytes + e / 2, high, low);
            __m256 f[4];
            nf4_decode32(planes, half == 0 ? high : low, f);
            for (int m = 0; m < M; ++m) {
              const __m256 vd = _mm256_set1_ps(d[m][r]);
              for (int a = 0; a < 4; ++a) t[m][a] = _mm256_fmadd_ps(vd, f[a], t[m][a]);
            }
          }
          for (int m = 0; m < M; ++m)
            for (int a = 0; a < 4; ++a) {
              float* out = acc + m * st.width + e + 32 * half + 8 * a;
              _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), t[m][a]));
            }
        }
    } else {
      for (int64_t e = 0; e < w.block; e += 16) {
        __m256 t[M][2];
        for (int m = 0; m < M; ++m) t[m][0] = t[m][1] = _mm256_setzero_ps();
        for (int r = 0; r < R; ++r) {
          __m256 high, low;
          int4_decode16(p + r * w.row_bytes + e / 2, high, low);
          for (int m = 0; m < M; ++m) {
            const __m256 vd = _mm256_set1_ps(d[m][r]);
            t[m][0] = _mm256_fmadd_ps(vd, high, t[m][0]);
            t[m][1] = _mm256_fmadd_ps(vd, low, t[m][1]);
          }
        }
        for (int m = 0; m < M; ++m)
          for (int a = 0; a < 2; ++a) {
            float* out = acc + m * st.width + e + 8 * a;
            _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), t[m][a]));
          }
      }
    }
  }
}

// dx[m, k] (+)= Σ_o dy[m, o] Ŵ[o, k] over groups [g0, g1): the strip is summed in permuted order in
// a small buffer (L1), R output rows at a time, then un-permuted into dx (intN: minus Σ_o dy·s·z
// per group, ŵ = s·q − s·z as in the forward).
template <bool NF4, int M>
ANVIL_AVX2 void input_grad_chunked(const PackedWeight& w, const float* dy, int64_t lddy, float* dx, int64_t lddx,
                                   int64_t g0, int64_t g1, bool accumulate) {
  constexpr int R = M == 1 ? 4 : (M == 2 ? 2 : 1);  // t[M][·] and the rows' codes in registers
  const Nf4Planes planes = nf4_planes(w.nf4_table != nullptr ? w.nf4_table : nf4_values());
  Strip st;
  st.g0 = g0, st.g1 = g1, st.groups = g1 - g0, st.width = st.groups * w.block;
  const int64_t k0 = g0 * w.block;
  std::unique_ptr<float[]> buf(new float[M * st.width + M * st.groups + R * st.groups]);
  st.acc = buf.get();
  st.zero_terms = st.acc + M * st.width;
  st.scales = st.zero_terms + M * st.groups;
  std::fill(st.acc, st.scales, 0.0f);
  constexpr int64_t kPrefetchRows = 8;  // the strip of a later row is fetched while these compute
  const int64_t strip_bytes = st.width / 2;
  const auto prefetch = [&](int64_t o, int rows) {
    for (int64_t q = o + kPrefetchRows; q < std::min(w.out, o + kPrefetchRows + rows); ++q) {
      const char* ahead = reinterpret_cast<const char*>(w.codes + q * w.row_bytes + k0 / 2);
      for (int64_t off = 0; off < strip_bytes; off += 64) _mm_prefetch(ahead + off, _MM_HINT_T0);
    }
  };
  int64_t o = 0;
  for (; o + R <= w.out; o += R) {
    prefetch(o, R);
    strip_rows<NF4, M, R>(w, planes, dy, lddy, o, st);
  }
  for (; o < w.out; ++o) strip_rows<NF4, M, 1>(w, planes, dy, lddy, o, st);
  const int64_t chunk = NF4 ? 64 : 16;
  for (int m = 0; m < M; ++m)
    for (int64_t kc = 0; kc < st.width; kc += chunk) {
      const float zt = NF4 ? 0.0f : st.zero_terms[m * st.groups + kc / w.block];
      float* out = dx + m * lddx + k0 + kc;
      const float* in = st.acc + m * st.width + kc;
      for (int64_t v = 0; v < chunk / 8; ++v)
        for (int64_t i = 0; i < 8; ++i) {
          const float value = in[8 * v + i] - zt;
          float& y = out[chunk_element(NF4, v, i)];
          y = accumulate ? y + value : value;
        }
    }
}

template <int M>
struct GemvChunkedNf4 {
  using Fn = void (*)(const PackedWeight&, const float*, int64_t, const float*, float*, int64_t, int64_t, int64_t,
                      bool);
  static constexpr Fn run = gemv_chunked<true, M>;
};
template <int M>
struct GemvChunkedInt4 {
  static constexpr GemvChunkedNf4<1>::Fn run = gemv_chunked<false, M>;
};
template <int M>
struct InputGradChunkedNf4 {
  using Fn = void (*)(const PackedWeight&, const float*, int64_t, float*, int64_t, int64_t, int64_t, bool);
  static constexpr Fn run = input_grad_chunked<true, M>;
};
template <int M>
struct InputGradChunkedInt4 {
  static constexpr InputGradChunkedNf4<1>::Fn run = input_grad_chunked<false, M>;
};

template <template <int> class Kernel, typename Fn>
Fn pick_rows(int64_t rows) {
  static_assert(kQuantFewRows == 8, "one entry per row count");
  static constexpr Fn fns[] = {Kernel<1>::run, Kernel<2>::run, Kernel<3>::run, Kernel<4>::run,
                               Kernel<5>::run, Kernel<6>::run, Kernel<7>::run, Kernel<8>::run};
  return fns[rows - 1];
}

// The kernel instance for the weight's bits and M = rows (1 .. kQuantFewRows), as a pointer.
template <template <int, int> class Kernel>
typename Kernel<4, 1>::Fn pick(int bits, int64_t rows) {
  static_assert(kQuantFewRows == 8, "one entry per row count");
  static constexpr typename Kernel<4, 1>::Fn four[] = {Kernel<4, 1>::run, Kernel<4, 2>::run, Kernel<4, 3>::run,
                                                       Kernel<4, 4>::run, Kernel<4, 5>::run, Kernel<4, 6>::run,
                                                       Kernel<4, 7>::run, Kernel<4, 8>::run};
  static constexpr typename Kernel<4, 1>::Fn two[] = {Kernel<2, 1>::run, Kernel<2, 2>::run, Kernel<2, 3>::run,
                                                      Kernel<2, 4>::run, Kernel<2, 5>::run, Kernel<2, 6>::run,
                                                      Kernel<2, 7>::run, Kernel<2, 8>::run};
  return (bits == 4 ? four : two)[rows - 1];
}

template <int BITS, int M>
struct Gemv {
  using Fn = void (*)(const PackedWeight&, const float*, int64_t, float*, int64_t, int64_t, int64_t, bool);
  static constexpr Fn run = gemv_rows<BITS, M>;
};

template <int BITS, int M>
struct GemvInt {
  using Fn = void (*)(const PackedWeight&, const float*, int64_t, const float*, float*, int64_t, int64_t, int64_t,
                      bool);
  static constexpr Fn run = gemv_rows_int<BITS, M>;
};

template <int BITS, int M>
struct InputGrad {
  using Fn = void (*)(const PackedWeight&, const float*, int64_t, float*, int64_t, int64_t, int64_t, bool);
  static constexpr Fn run = input_grad_strip<BITS, M>;
};

}  // namespace

bool chunked(const PackedWeight& w) {
  return w.bits == 4 && w.block % (w.nf4 ? 64 : 32) == 0;
}

void chunk_order_inputs(const PackedWeight& w, const float* x, int64_t ldx, int64_t rows, float* out) {
  const int64_t chunk = w.nf4 ? 64 : 16;
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t k = 0; k < w.in; k += chunk)
      for (int64_t v = 0; v < chunk / 8; ++v)
        for (int64_t i = 0; i < 8; ++i) out[m * w.in + k + 8 * v + i] = x[m * ldx + k + chunk_element(w.nf4, v, i)];
}

void gemv(const PackedWeight& w, const float* x, int64_t ldx, const float* x_group_sums, int64_t rows, float* y,
          int64_t ldy, int64_t o0, int64_t o1, bool accumulate) {
  using Fn = GemvChunkedNf4<1>::Fn;
  if (chunked(w))
    return (w.nf4 ? pick_rows<GemvChunkedNf4, Fn>(rows) : pick_rows<GemvChunkedInt4, Fn>(rows))(
        w, x, ldx, x_group_sums, y, ldy, o0, o1, accumulate);
  if (w.nf4) return pick<Gemv>(w.bits, rows)(w, x, ldx, y, ldy, o0, o1, accumulate);
  pick<GemvInt>(w.bits, rows)(w, x, ldx, x_group_sums, y, ldy, o0, o1, accumulate);
}

void gemv_input_grad(const PackedWeight& w, const float* dy, int64_t lddy, int64_t rows, float* dx, int64_t lddx,
                     int64_t g0, int64_t g1, bool accumulate) {
  using Fn = InputGradChunkedNf4<1>::Fn;
  if (chunked(w))
    return (w.nf4 ? pick_rows<InputGradChunkedNf4, Fn>(rows) : pick_rows<InputGradChunkedInt4, Fn>(rows))(
        w, dy, lddy, dx, lddx, g0, g1, accumulate);
  pick<InputGrad>(w.bits, rows)(w, dy, lddy, dx, lddx, g0, g1, accumulate);
}

void dequantize_tile(const PackedWeight& w, int64_t o0, int64_t o1, int64_t g0, int64_t g1, float* out, int64_t ld) {
  if (w.bits == 4) return dequantize_rows<4>(w, o0, o1, g0, g1, out, ld);
  dequantize_rows<2>(w, o0, o1, g0, g1, out, ld);
}

}  // namespace anvil::kernels::cpu::avx2
