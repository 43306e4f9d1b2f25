// Products of a packed low-bit weight on CUDA (kernels/quant.h): W4A16 / W2A16 with f32 or bf16
// activations and f32 accumulation. The formats (nf4, nf4 + double quantization, int4, int2) are
// described in kernels/quant.h; here every scheme reads as ŵ = scale·(v(code) − zero) per group of
// `block` elements within one output row (nf4: v = NF4[code], zero 0, scale the block's absmax,
// decoded from its 8-bit code as DYN[code]·absmax_scale[b / 256] + offset under double quant;
// intN: v = code, scale s, zero z). Codes are read 8 elements (one "unit", 4 or 2 bytes) at a time.
//
// Few rows (≤ kGemvMaxRows, decode): kernels read the packed codes directly.
//   y = x·Ŵᵀ: one warp per output row; each lane loads 16 bytes of codes (uint4) at a time, 512
//     contiguous bytes per warp, unpacks them in registers against the NF4 / DYN tables staged in
//     shared memory (lanes index them at random: constant memory would serialise), and keeps an
//     f32 sum per activation row; a warp shuffle adds the lanes.
//   dx = dy·Ŵ: a reduction down the columns of Ŵ. Each lane owns one unit (8 columns) and walks
//     a slice of the output rows, one warp per row, so a warp reads 32 consecutive units of a row;
//     the warps of a block add their sums through shared memory in warp order, and the slices
//     (split so that the grid fills the GPU) write f32 partial rows that one more pass adds in
//     slice order. No atomics: every result is bitwise reproducible, as in common.cuh.
//   Activation rows go in passes of up to 4, each pass reading the weight once.
// Many rows: Ŵ is dequantized a tile at a time (at most kTileElements, in the activations'
//   dtype) into a scratch buffer that the cuBLASLt product (matmul.cpp) reads. y tiles over output
//   rows (y[:, o0:o1] = x·Ŵ[o0:o1]ᵀ); dx tiles over input columns (dx[:, i0:i1] = dy·Ŵ[:, i0:i1]),
//   so each element of dx comes from one f32-accumulated product and is rounded once, never
//   summed over tiles in bf16.
#include <climits>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/matrix_layout.h"
#include "kernels/quant.h"

namespace anvil::kernels::cuda {
namespace {

// ---------------------------------------------------------------- formats

enum class Fmt { NF4, NF4DQ, Int4, Int2 };

template <Fmt F>
constexpr int kBits = F == Fmt::Int2 ? 2 : 4;
template <Fmt F>
constexpr bool kNormalFloat = F == Fmt::NF4 || F == Fmt::NF4DQ;

// The code tables, passed by value as a kernel parameter (no per-device upload to manage) and
// staged into shared memory by each block that needs them.
struct QuantTables {
  float nf4[16];
  float dyn[256];
};

const QuantTables& quant_tables() {
  static const QuantTables t = [] {
    QuantTables q;
    std::memcpy(q.nf4, nf4_values(), sizeof q.nf4);
    std::memcpy(q.dyn, dynamic_map_signed(), sizeof q.dyn);
    return q;
  }();
  return t;
}

// The weight's device tensors as raw pointers, and its sizes in the units the kernels count.
struct QView {
  const uint8_t* packed = nullptr;
  const float* absmax = nullptr;         // nf4
  const uint8_t* absmax_codes = nullptr;  // nf4 + double quant
  const float* absmax_scales = nullptr;
  float absmax_offset = 0.0f;
  const float* scales = nullptr;  // intN
  const float* zeros = nullptr;
  int units_per_row = 0;    // in / 8
  int units_per_group = 0;  // block / 8
  int64_t groups_per_row = 0;
  int64_t row_bytes = 0;  // in · bits / 8
};

struct GroupParams {
  float scale, zero;
};

// Scale and zero of group `idx` (row · groups_per_row + group of the row).
template <Fmt F>
__device__ __forceinline__ GroupParams group_params(const QView& w, int64_t idx, const float* s_dyn) {
  if constexpr (F == Fmt::NF4) {
    return {__ldg(w.absmax + idx), 0.0f};
  } else if constexpr (F == Fmt::NF4DQ) {
    // As bitsandbytes: the product rounded to f32, then the offset added (never one FMA).
    const float scaled = __fmul_rn(s_dyn[__ldg(w.absmax_codes + idx)], __ldg(w.absmax_scales + (idx >> 8)));
    return {__fadd_rn(scaled, w.absmax_offset), 0.0f};
  } else {
    return {__ldg(w.scales + idx), __ldg(w.zeros + idx)};
  }
}

// Code of element e (0..7) of a unit whose bytes sit little-endian in `raw`: the first element
// of each byte in its most significant bits.
template <int B>
__device__ __forceinline__ uint32_t unit_code(uint32_t raw, int e) {
  if constexpr (B == 4) return (raw >> (8 * (e >> 1) + ((e & 1) ? 0 : 4))) & 15u;
  else return (raw >> (8 * (e >> 2) + 6 - 2 * (e & 3))) & 3u;
}

template <Fmt F>
__device__ __forceinline__ void decode_unit(uint32_t raw, GroupParams g, const float* s_nf4, float (&w)[8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const uint32_t c = unit_code<kBits<F>>(raw, e);
    const float v = kNormalFloat<F> ? s_nf4[c] : static_cast<float>(c);
    w[e] = g.scale * (v - g.zero);
  }
}

// V consecutive units starting at p, one load: V = 1 (4 or 2 bytes) or 16 bytes (uint4).
template <int B, int V>
__device__ __forceinline__ void load_units(const uint8_t* p, uint32_t (&raw)[V]) {
  if constexpr (V == 1) {
    if constexpr (B == 4) raw[0] = __ldg(reinterpret_cast<const unsigned int*>(p));
    else raw[0] = __ldg(reinterpret_cast<const unsigned short*>(p));
  } else {
    static_assert(V * B == 16, "a vector load is 16 bytes");
    const uint4 q = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int u = 0; u < V; ++u) raw[u] = B == 4 ? words[u] : (words[u >> 1] >> (16 * (u & 1))) & 0xffffu;
  }
}

// Copies the tables the format reads into shared memory (every thread of the block calls it).
template <Fmt F>
__device__ __forceinline__ void stage_tables(const QuantTables& t, float* s_nf4, float* s_dyn) {
  if constexpr (kNormalFloat<F>) {
    for (int i = threadIdx.x; i < 16; i += blockDim.x) s_nf4[i] = t.nf4[i];
    if constexpr (F == Fmt::NF4DQ)
      for (int i = threadIdx.x; i < 256; i += blockDim.x) s_dyn[i] = t.dyn[i];
    __syncthreads();
  }
}

// 8 activations at p (16-byte aligned) as f32.
template <class T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
  if constexpr (sizeof(T) == 2) {
    load16(p, v);
  } else {
    load16(p, v);
    load16(p + 4, v + 4);
  }
}

// ---------------------------------------------------------------- kernels

constexpr int kGemvMaxRows = 16;  // more activation rows than this go through cuBLASLt
constexpr int kPassRows = 4;      // activation rows per pass of the GEMV kernels
constexpr int kGemvWarps = 8;     // y = x·Ŵᵀ: output rows per block
constexpr int kGradWarps = 4;     // dx = dy·Ŵ: warps sharing a block's units
constexpr int kGradTargetBlocks = 512;  // fills a GPU; a constant, so the split (and the bits) depend on the shape only
constexpr int64_t kTileElements = int64_t{1} << 22;  // the dequantized tile: 8 MiB in bf16, 16 in f32

// y[r, o] (+)= sum_i x[r, i]·ŵ[o, i] for r < nrows (≤ R): warp per output row o, lane per V units.
template <class T, Fmt F, int V, int R>
__global__ void __launch_bounds__(kGemvWarps * 32)
    quant_gemv_kernel(const T* x, int64_t ldx, int nrows, QView w, int64_t out, T* y, int64_t ldy,
                      bool accumulate, QuantTables tables) {
  __shared__ float s_nf4[16], s_dyn[256];
  stage_tables<F>(tables, s_nf4, s_dyn);
  constexpr int B = kBits<F>;
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (o >= out) return;  // whole warps only; nothing below synchronises the block
  const uint8_t* row = w.packed + o * w.row_bytes;
  const int64_t group0 = o * w.groups_per_row;
  const int chunks = w.units_per_row / V;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  for (int c = lane; c < chunks; c += 32) {
    uint32_t raw[V];
    load_units<B, V>(row + static_cast<int64_t>(c) * V * B, raw);
    const int u0 = c * V;
    int g = u0 / w.units_per_group, next_group = (g + 1) * w.units_per_group;
    GroupParams gp = group_params<F>(w, group0 + g, s_dyn);
#pragma unroll
    for (int u = 0; u < V; ++u) {
      if (u0 + u == next_group) {  // the chunk crosses into the next group (block < 8·V)
        ++g;
        next_group += w.units_per_group;
        gp = group_params<F>(w, group0 + g, s_dyn);
      }
      float wv[8];
      decode_unit<F>(raw[u], gp, s_nf4, wv);
      const int64_t col = static_cast<int64_t>(u0 + u) * 8;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (r < nrows) {
          float xv[8];
          load8(x + r * ldx + col, xv);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r] = fmaf(xv[e], wv[e], acc[r]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float s = warp_reduce(acc[r], SumOp{});
    if (lane == 0 && r < nrows) {
      T* dst = y + r * ldy + o;
      *dst = from_f32<T>(accumulate ? to_f32(*dst) + s : s);
    }
  }
}

// Shared-memory row of one warp's sums for one activation row: 32 lanes × 8 columns, padded to
// a stride of 9 per lane so the lanes' writes fall in distinct banks.
constexpr int kLanePitch = 9;
constexpr int kSumsPitch = 32 * kLanePitch;

// partials[slice][r][i] = sum over the slice's output rows o of dy[r, o]·ŵ[o, i], for the 32
// units (256 columns) of block x and the output rows [slice·rows_per_slice, +rows_per_slice).
template <class T, Fmt F, int R>
__global__ void __launch_bounds__(kGradWarps * 32)
    quant_gemv_grad_kernel(const T* dy, int64_t lddy, int nrows, QView w, int64_t out, int64_t rows_per_slice,
                           float* partials, QuantTables tables) {
  __shared__ float s_nf4[16], s_dyn[256];
  __shared__ float sums[kGradWarps * R * kSumsPitch];
  stage_tables<F>(tables, s_nf4, s_dyn);
  constexpr int B = kBits<F>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int unit = blockIdx.x * 32 + lane;
  const int64_t slice = blockIdx.y, o_begin = slice * rows_per_slice;
  const int64_t o_end = o_begin + rows_per_slice < out ? o_begin + rows_per_slice : out;
  float acc[R][8];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[r][e] = 0.0f;
  if (unit < w.units_per_row) {
    const int g = unit / w.units_per_group;
    for (int64_t o = o_begin + warp; o < o_end; o += kGradWarps) {
      uint32_t raw[1];
      load_units<B, 1>(w.packed + o * w.row_bytes + static_cast<int64_t>(unit) * B, raw);
      float wv[8];
      decode_unit<F>(raw[0], group_params<F>(w, o * w.groups_per_row + g, s_dyn), s_nf4, wv);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (r < nrows) {
          const float d = to_f32(dy[r * lddy + o]);  // one address per warp: a broadcast
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[r][e] = fmaf(d, wv[e], acc[r][e]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int e = 0; e < 8; ++e) sums[(warp * R + r) * kSumsPitch + lane * kLanePitch + e] = acc[r][e];
  __syncthreads();
  const int64_t in = static_cast<int64_t>(w.units_per_row) * 8;
  for (int k = threadIdx.x; k < R * 256; k += blockDim.x) {  // k = r·256 + local column: coalesced stores
    const int r = k >> 8, j = k & 255;
    const int local_unit = j >> 3;
    if (r >= nrows || blockIdx.x * 32 + local_unit >= w.units_per_row) continue;
    float s = 0.0f;
#pragma unroll
    for (int v = 0; v < kGradWarps; ++v) s += sums[(v * R + r) * kSumsPitch + local_unit * kLanePitch + (j & 7)];
    partials[(slice * nrows + r) * in + static_cast<int64_t>(blockIdx.x) * 256 + j] = s;
  }
}

// dx[r, i] (+)= sum over slices of partials[slice][r][i], in slice order.
template <class T>
__global__ void sum_slices_kernel(const float* partials, int64_t slices, int nrows, int64_t in, T* dx, int64_t lddx,
                                  bool accumulate) {
  const int r = blockIdx.y;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < in;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T* dst = dx + r * lddx + i;
    float acc = accumulate ? to_f32(*dst) : 0.0f;
    for (int64_t s = 0; s < slices; ++s) acc += partials[(s * nrows + r) * in + i];
    *dst = from_f32<T>(acc);
  }
}

// out[r, :] = ŵ[row_begin + r, 8·unit_begin : 8·(unit_begin + units)]; thread per unit.
template <class T, Fmt F, bool Vec>
__global__ void dequantize_kernel(QView w, int64_t row_begin, int64_t rows, int unit_begin, int units, T* out,
                                  int64_t ldo, QuantTables tables) {
  __shared__ float s_nf4[16], s_dyn[256];
  stage_tables<F>(tables, s_nf4, s_dyn);
  constexpr int B = kBits<F>;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t o = row_begin + r;
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < units; k += gridDim.x * blockDim.x) {
      const int unit = unit_begin + k;
      uint32_t raw[1];
      load_units<B, 1>(w.packed + o * w.row_bytes + static_cast<int64_t>(unit) * B, raw);
      float v[8];
      decode_unit<F>(raw[0], group_params<F>(w, o * w.groups_per_row + unit / w.units_per_group, s_dyn), s_nf4, v);
      T* dst = out + r * ldo + static_cast<int64_t>(k) * 8;
      if constexpr (Vec) {
        store16(dst, v);
        if constexpr (sizeof(T) == 4) store16(dst + 4, v + 4);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) dst[e] = from_f32<T>(v[e]);
      }
    }
  }
}

// ---------------------------------------------------------------- host

Fmt format_of(const QuantizedWeight& w) {
  switch (w.scheme) {
    case QuantScheme::NF4: return w.double_quant() ? Fmt::NF4DQ : Fmt::NF4;
    case QuantScheme::Int4: return Fmt::Int4;
    case QuantScheme::Int2: return Fmt::Int2;
  }
  ANVIL_FAIL("quantized weight has an unknown scheme ", static_cast<int>(w.scheme));
}

// Calls fn(std::integral_constant<Fmt, F>{}) for the format f.
template <class Fn>
void with_format(Fmt f, Fn&& fn) {
  switch (f) {
    case Fmt::NF4: fn(std::integral_constant<Fmt, Fmt::NF4>{}); break;
    case Fmt::NF4DQ: fn(std::integral_constant<Fmt, Fmt::NF4DQ>{}); break;
    case Fmt::Int4: fn(std::integral_constant<Fmt, Fmt::Int4>{}); break;
    case Fmt::Int2: fn(std::integral_constant<Fmt, Fmt::Int2>{}); break;
  }
}

// A checked weight: its format and device pointers.
struct Weight {
  Fmt fmt;
  QView view;
  int64_t out = 0, in = 0;
};

// w's shapes (check_quantized_weight) and its tensors' dtypes, contiguity and device.
Weight checked_weight(const OpContext& ctx, const QuantizedWeight& w) {
  check_quantized_weight(w, std::string(ctx.op()) + ": w");
  ANVIL_CHECK(w.in_features <= INT_MAX && w.out_features <= INT_MAX, ctx.op(), ": w is [", w.out_features, ", ",
              w.in_features, "], more than 2^31 - 1 rows or columns, which the CUDA kernels do not index");
  Weight k;
  k.fmt = format_of(w);
  k.out = w.out_features;
  k.in = w.in_features;
  QView& v = k.view;
  v.packed = static_cast<const uint8_t*>(ctx.contiguous("w.packed", w.packed, DType::U8));
  if (k.fmt == Fmt::NF4) {
    v.absmax = ctx.contiguous_f32("w.absmax", w.absmax);
  } else if (k.fmt == Fmt::NF4DQ) {
    v.absmax_codes = static_cast<const uint8_t*>(ctx.contiguous("w.absmax_codes", w.absmax_codes, DType::U8));
    v.absmax_scales = ctx.contiguous_f32("w.absmax_scales", w.absmax_scales);
    v.absmax_offset = w.absmax_offset;
  } else {
    v.scales = ctx.contiguous_f32("w.scales", w.scales);
    v.zeros = ctx.contiguous_f32("w.zeros", w.zeros);
  }
  // A unit (8 codes) is read as one 4- or 2-byte word: rows start on such a boundary (in is a
  // multiple of 8), so only a packed view cut off a unit boundary can break it.
  const int unit_bytes = quant_bits(w.scheme);
  ANVIL_CHECK(reinterpret_cast<uintptr_t>(v.packed) % unit_bytes == 0, ctx.op(), ": w.packed ", w.packed.describe(),
              " starts at an address that is not a multiple of ", unit_bytes,
              " bytes — pass packed codes that start on a row boundary (or a .clone())");
  v.units_per_row = static_cast<int>(w.in_features / 8);
  v.units_per_group = static_cast<int>(w.block / 8);
  v.groups_per_row = w.in_features / w.block;
  v.row_bytes = w.in_features * quant_bits(w.scheme) / 8;
  return k;
}

// A row view as the 2-D [rows, cols] tensor matmul takes (leading dims collapsed).
Tensor as_matrix(const Tensor& t, const Rows& v) { return t.as_strided({v.rows, v.cols}, {v.ld, 1}, t.offset()); }

// Rows [row_begin, +rows) and units [unit_begin, +units) of ŵ into out (T, row stride ldo).
void launch_dequantize(const OpContext& ctx, const Weight& w, int64_t row_begin, int64_t rows, int unit_begin,
                       int units, void* out, DType dt, int64_t ldo) {
  if (rows == 0 || units == 0) return;
  with_float_type(dt, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = aligned16(out) && (ldo * static_cast<int64_t>(sizeof(T))) % 16 == 0;
    const dim3 grid(blocks_for(units, kThreads), static_cast<unsigned>(rows < 65535 ? rows : 65535));
    with_format(w.fmt, [&](auto fmt) {
      constexpr Fmt F = decltype(fmt)::value;
      T* p = static_cast<T*>(out);
      if (vec)
        dequantize_kernel<T, F, true><<<grid, kThreads, 0, ctx.stream()>>>(w.view, row_begin, rows, unit_begin, units,
                                                                          p, ldo, quant_tables());
      else
        dequantize_kernel<T, F, false><<<grid, kThreads, 0, ctx.stream()>>>(w.view, row_begin, rows, unit_begin,
                                                                           units, p, ldo, quant_tables());
      ANVIL_CUDA_CHECK_LAUNCH();
    });
  });
}

// y = x·Ŵᵀ (+ y) for few rows; x's rows 16-byte aligned.
void gemv_forward(const OpContext& ctx, const Weight& w, const Rows& vx, const Rows& vy, bool accumulate) {
  with_float_type(vx.dtype, [&](auto tag) {
    using T = decltype(tag);
    with_format(w.fmt, [&](auto fmt) {
      constexpr Fmt F = decltype(fmt)::value;
      constexpr int kVec = 16 / kBits<F>;  // units per 16-byte load
      const bool vec = w.view.units_per_row % kVec == 0 && aligned16(w.view.packed);
      const unsigned grid = static_cast<unsigned>((w.out + kGemvWarps - 1) / kGemvWarps);
      for (int64_t r0 = 0; r0 < vx.rows; r0 += kPassRows) {
        const int n = static_cast<int>(vx.rows - r0 < kPassRows ? vx.rows - r0 : kPassRows);
        const T* x = static_cast<const T*>(vx.p) + r0 * vx.ld;
        T* y = static_cast<T*>(vy.p) + r0 * vy.ld;
        const auto launch = [&](auto kernel) {
          kernel<<<grid, kGemvWarps * 32, 0, ctx.stream()>>>(x, vx.ld, n, w.view, w.out, y, vy.ld, accumulate,
                                                             quant_tables());
          ANVIL_CUDA_CHECK_LAUNCH();
        };
        if (n == 1) launch(vec ? quant_gemv_kernel<T, F, kVec, 1> : quant_gemv_kernel<T, F, 1, 1>);
        else launch(vec ? quant_gemv_kernel<T, F, kVec, kPassRows> : quant_gemv_kernel<T, F, 1, kPassRows>);
      }
    });
  });
}

// dx = dy·Ŵ (+ dx) for few rows.
void gemv_input_grad(const OpContext& ctx, const Weight& w, const Rows& vdy, const Rows& vdx, bool accumulate) {
  const int units = w.view.units_per_row;
  const int64_t tiles = (units + 31) / 32;
  // Slices of at least 64 output rows, as many as fill kGradTargetBlocks blocks with the tiles.
  int64_t slices = (kGradTargetBlocks + tiles - 1) / tiles;
  const int64_t max_slices = (w.out + 63) / 64;
  slices = slices < max_slices ? slices : max_slices;
  slices = slices < 1 ? 1 : slices;
  const int64_t rows_per_slice = (w.out + slices - 1) / slices;
  slices = w.out == 0 ? 1 : (w.out + rows_per_slice - 1) / rows_per_slice;
  const int pass_rows = static_cast<int>(vdy.rows < kPassRows ? vdy.rows : kPassRows);
  Tensor partials = ctx.scratch(slices * pass_rows * w.in, DType::F32);
  float* pp = partials.data<float>();
  with_float_type(vdy.dtype, [&](auto tag) {
    using T = decltype(tag);
    with_format(w.fmt, [&](auto fmt) {
      constexpr Fmt F = decltype(fmt)::value;
      for (int64_t r0 = 0; r0 < vdy.rows; r0 += kPassRows) {
        const int n = static_cast<int>(vdy.rows - r0 < kPassRows ? vdy.rows - r0 : kPassRows);
        const T* dy = static_cast<const T*>(vdy.p) + r0 * vdy.ld;
        T* dx = static_cast<T*>(vdx.p) + r0 * vdx.ld;
        if (units > 0) {
          const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(slices));
          const auto launch = [&](auto kernel) {
            kernel<<<grid, kGradWarps * 32, 0, ctx.stream()>>>(dy, vdy.ld, n, w.view, w.out, rows_per_slice, pp,
                                                               quant_tables());
            ANVIL_CUDA_CHECK_LAUNCH();
          };
          if (n == 1) launch(quant_gemv_grad_kernel<T, F, 1>);
          else launch(quant_gemv_grad_kernel<T, F, kPassRows>);
          const dim3 sum_grid(blocks_for(w.in, kThreads, 1024), static_cast<unsigned>(n));
          sum_slices_kernel<T><<<sum_grid, kThreads, 0, ctx.stream()>>>(pp, slices, n, w.in, dx, vdx.ld, accumulate);
          ANVIL_CUDA_CHECK_LAUNCH();
        }
      }
    });
  });
}

// Shared argument checks of the two products: a [rows, a_cols] activation `a` (the call's
// dtype and device) and its [rows, b_cols] result `b`.
void check_product(const OpContext& ctx, const char* a_name, const Tensor& a, const Rows& va, int64_t a_cols,
                   const char* b_name, const Tensor& b, const Rows& vb, int64_t b_cols, const Weight& w) {
  ANVIL_CHECK(va.cols == a_cols, ctx.op(), ": ", a_name, " ", a.describe(), " has ", va.cols, " features but w is [",
              w.out, ", ", w.in, "] — ", a_name, " must be [rows, ", a_cols, "]");
  ANVIL_CHECK(vb.rows == va.rows && vb.cols == b_cols, ctx.op(), ": ", b_name, " ", b.describe(), " must be [",
              va.rows, ", ", b_cols, "] (", a_name, " has ", va.rows, " rows, w is [", w.out, ", ", w.in, "])");
  ANVIL_CHECK(!views_may_overlap(b, a), ctx.op(), ": ", b_name, " ", b.describe(), " overlaps ", a_name, " ",
              a.describe(), " in memory — write the product into a separate buffer");
}

// Rows of `elements_per_row` in one dequantized tile: a multiple of 64, at least 64.
int64_t tile_rows(int64_t elements_per_row) {
  const int64_t n = kTileElements / (elements_per_row > 0 ? elements_per_row : 1) / 64 * 64;
  return n < 64 ? 64 : n;
}

}  // namespace

void dequantize_rows(const QuantizedWeight& w, int64_t row_begin, int64_t row_end, Tensor& out) {
  OpContext ctx("dequantize_rows", "out", out);
  const Rows vo = ctx.rows("out", out);
  const Weight k = checked_weight(ctx, w);
  ANVIL_CHECK(0 <= row_begin && row_begin <= row_end && row_end <= k.out, "dequantize_rows: rows [", row_begin, ", ",
              row_end, ") are not within w's ", k.out, " output rows");
  ANVIL_CHECK(vo.rows == row_end - row_begin && vo.cols == k.in, "dequantize_rows: out ", out.describe(),
              " must be [", row_end - row_begin, ", ", k.in, "] for rows [", row_begin, ", ", row_end, ") of w [",
              k.out, ", ", k.in, "]");
  launch_dequantize(ctx, k, row_begin, vo.rows, 0, k.view.units_per_row, vo.p, vo.dtype, vo.ld);
}

void quant_matmul(const Tensor& x, const QuantizedWeight& w, Tensor& y, bool accumulate) {
  OpContext ctx("quant_matmul", "x", x);
  const Rows vx = ctx.rows("x", x);
  const Rows vy = ctx.rows("y", y, x.dtype());
  const Weight k = checked_weight(ctx, w);
  check_product(ctx, "x", x, vx, k.in, "y", y, vy, k.out, k);
  if (vx.rows == 0 || k.out == 0) return;
  if (vx.rows <= kGemvMaxRows) {
    Rows xa = vx;
    Tensor copy;  // the kernel reads x 16 bytes at a time: an unaligned view goes through a copy
    if (!aligned16(vx.p) || (vx.ld * static_cast<int64_t>(dtype_size(vx.dtype))) % 16 != 0) {
      copy = Tensor::empty({vx.rows, vx.cols}, vx.dtype, x.device());
      copy.copy_(as_matrix(x, vx));
      xa.p = copy.raw_data();
      xa.ld = vx.cols;
    }
    gemv_forward(ctx, k, xa, vy, accumulate);
    return;
  }
  const Tensor x2 = as_matrix(x, vx);
  Tensor y2 = as_matrix(y, vy);
  const int64_t rows_per_tile = tile_rows(k.in) < k.out ? tile_rows(k.in) : k.out;
  Tensor tile = ctx.scratch(rows_per_tile * k.in, vx.dtype);
  for (int64_t o0 = 0; o0 < k.out; o0 += rows_per_tile) {
    const int64_t n = k.out - o0 < rows_per_tile ? k.out - o0 : rows_per_tile;
    Tensor wt = tile.slice(0, 0, n * k.in).view({n, k.in});
    launch_dequantize(ctx, k, o0, n, 0, k.view.units_per_row, wt.raw_data(), vx.dtype, k.in);
    Tensor ys = y2.slice(1, o0, o0 + n);
    matmul(x2, false, wt, true, ys, 1.0f, accumulate ? 1.0f : 0.0f);
  }
}

void quant_matmul_input_grad(const Tensor& dy, const QuantizedWeight& w, Tensor& dx, bool accumulate) {
  OpContext ctx("quant_matmul_input_grad", "dy", dy);
  const Rows vdy = ctx.rows("dy", dy);
  const Rows vdx = ctx.rows("dx", dx, dy.dtype());
  const Weight k = checked_weight(ctx, w);
  check_product(ctx, "dy", dy, vdy, k.out, "dx", dx, vdx, k.in, k);
  if (vdy.rows == 0 || k.in == 0) return;
  if (vdy.rows <= kGemvMaxRows) {
    gemv_input_grad(ctx, k, vdy, vdx, accumulate);
    return;
  }
  const Tensor dy2 = as_matrix(dy, vdy);
  Tensor dx2 = as_matrix(dx, vdx);
  // Column tiles of Ŵ [out, cols]: cols a multiple of 64 (so of 8, whole units), or all of in.
  const int64_t cols_per_tile = tile_rows(k.out) < k.in ? tile_rows(k.out) : k.in;
  Tensor tile = ctx.scratch(k.out * cols_per_tile, vdy.dtype);
  for (int64_t i0 = 0; i0 < k.in; i0 += cols_per_tile) {
    const int64_t n = k.in - i0 < cols_per_tile ? k.in - i0 : cols_per_tile;
    Tensor ws = tile.slice(0, 0, k.out * n).view({k.out, n});
    launch_dequantize(ctx, k, 0, k.out, static_cast<int>(i0 / 8), static_cast<int>(n / 8), ws.raw_data(), vdy.dtype,
                      n);
    Tensor dxs = dx2.slice(1, i0, i0 + n);
    matmul(dy2, false, ws, false, dxs, 1.0f, accumulate ? 1.0f : 0.0f);
  }
}

namespace {
// out[r, j] = x[r, perm[j]] (Scatter false), or dx[r, perm[j]] += dp[r, j] (Scatter true): perm is a
// permutation, so the scatter's targets are distinct and need no atomics.
template <class T, bool Scatter>
__global__ void permute_columns_kernel(const T* __restrict__ src, int64_t lds, T* __restrict__ dst, int64_t ldd,
                                       const int32_t* __restrict__ perm, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / cols, j = e % cols;
    if (Scatter) {
      T& d = dst[r * ldd + perm[j]];
      d = from_f32<T>(to_f32(d) + to_f32(src[r * lds + j]));
    } else {
      dst[r * ldd + j] = src[r * lds + perm[j]];
    }
  }
}

template <bool Scatter>
void launch_permute(const char* op, const char* src_name, const Tensor& src, const Tensor& perm, const char* dst_name,
                    Tensor& dst) {
  OpContext ctx(op, src_name, src);
  const Rows vs = ctx.rows(src_name, src), vd = ctx.rows(dst_name, dst, src.dtype());
  ANVIL_CHECK(vs.rows == vd.rows && vs.cols == vd.cols, op, ": ", dst_name, " ", dst.describe(), " is not ", src_name,
              "'s shape ", src.describe());
  const int32_t* p = ctx.contiguous_i32("perm", perm);
  ANVIL_CHECK(perm.numel() == vs.cols, op, ": perm has ", perm.numel(), " entries for ", vs.cols, " columns");
  if (vs.rows == 0 || vs.cols == 0) return;
  with_float_type(src.dtype(), [&](auto tag) {
    using T = decltype(tag);
    permute_columns_kernel<T, Scatter><<<blocks_for(vs.rows * vs.cols, kThreads), kThreads, 0, ctx.stream()>>>(
        static_cast<const T*>(vs.p), vs.ld, static_cast<T*>(vd.p), vd.ld, p, vs.rows, vs.cols);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}
}  // namespace

void permute_columns(const Tensor& x, const Tensor& perm, Tensor& out) {
  launch_permute<false>("permute_columns", "x", x, perm, "out", out);
}

void unpermute_add_columns(const Tensor& dp, const Tensor& perm, Tensor& dx) {
  launch_permute<true>("unpermute_add_columns", "dp", dp, perm, "dx", dx);
}

}  // namespace anvil::kernels::cuda
