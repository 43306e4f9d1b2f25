// The AVX2/FMA kernels of the quantized products (kernels/cpu/quant_matmul.cpp chooses them at run
// time). Eight codes at a time become eight floats in a register: their 4 (4-bit) or 2 (2-bit)
// bytes are broadcast to every lane and shifted right by a per-lane amount, leaving code j in the
// low bits of lane j (the first element sits in the high bits of its byte); vpermps then looks
// the codes up in the group's value table: 16 entries in two registers for 4-bit codes (bit 3
// picks the register through a blend), 4 entries repeated twice for 2-bit ones (vpermps reads
// 3 index bits, so the next code's low bit lands on the copy).
//
// Every function carries target("avx2,fma") and nothing here is inline in a header or a
// template from one, so no AVX2 instruction can leak into code the scalar path shares.
#include <immintrin.h>

#include <cstring>

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

void gemv(const PackedWeight& w, const float* x, int64_t ldx, const float* x_group_sums, int64_t rows, float* y,
          int64_t ldy, int64_t o0, int64_t o1, bool accumulate) {
  if (w.nf4) return pick<Gemv>(w.bits, rows)(w, x, ldx, y, ldy, o0, o1, accumulate);
  pick<GemvInt>(w.bits, rows)(w, x, ldx, x_group_sums, y, ldy, o0, o1, accumulate);
}

void gemv_input_grad(const PackedWeight& w, const float* dy, int64_t lddy, int64_t rows, float* dx, int64_t lddx,
                     int64_t g0, int64_t g1, bool accumulate) {
  pick<InputGrad>(w.bits, rows)(w, dy, lddy, dx, lddx, g0, g1, accumulate);
}

void dequantize_tile(const PackedWeight& w, int64_t o0, int64_t o1, int64_t g0, int64_t g1, float* out, int64_t ld) {
  if (w.bits == 4) return dequantize_rows<4>(w, o0, o1, g0, g1, out, ld);
  dequantize_rows<2>(w, o0, o1, g0, g1, out, ld);
}

}  // namespace anvil::kernels::cpu::avx2
