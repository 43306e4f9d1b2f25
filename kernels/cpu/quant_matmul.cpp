// The quantized products on the CPU (kernels/quant.h): y = x·Ŵᵀ and dx = dy·Ŵ for a packed nf4,
// int4 or int2 W, never holding all of Ŵ in floats.
//
// Every scheme dequantizes the same way: within a group (an nf4 absmax block, an intN group,
// both `block` consecutive codes of one row since `block` divides `in`) code c stands for
// table[c], a 16- or 4-entry table built per group (NF4[c]·absmax, s·(c − z)). The kernels
// build that table and look codes up in it; the AVX2 intN GEMV instead uses that ŵ is affine in
// the code and sums s·Σ x·q − s·z·Σ x per group (a conversion instead of a table lookup).
//   - Few activation rows (≤ kQuantFewRows, decoding): the kernels stream the packed codes
//     once, dequantize in registers and accumulate in f32. Forward: threads split the output
//     rows. Input grad: threads split the input columns into strips of whole groups, each
//     walking every output row over its strip, so every dx element has one writer and sums
//     over o in order (no atomics, no thread-count-dependent partials).
//   - More rows: a tile of Ŵ (64 output rows × ~1024 inputs for the forward, 256 × ~256 for the
//     input grad) is dequantized into a thread-local buffer and handed to sgemm; the threads
//     split the tiles by their output block, so each sgemm runs on one thread and writes its
//     own part of y / dx.
// The AVX2/FMA kernels (quant_matmul_avx2.cpp) run when the CPU has them; the scalar ones
// (here) are the fallback and the reference the tests compare them with. Their "chunked" 4-bit
// kernels (int4 group % 32, nf4 block % 64) leave decoded codes in a lane order of their own: the
// forward reads x permuted once per call (chunk_order_inputs), the input grad sums its strip in that
// order and un-permutes it, with strips of one per thread so each output row is read in long runs.
#include "kernels/cpu/quant_matmul.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/common.h"
#include "kernels/matrix_layout.h"

namespace anvil::kernels {
namespace cpu {
namespace {

// Tiles of the many-rows path (in output rows, and in input columns rounded to whole groups).
constexpr int64_t kForwardTileRows = 64;
constexpr int64_t kForwardTileCols = 1024;
constexpr int64_t kInputGradTileRows = 256;
constexpr int64_t kInputGradTileCols = 256;
// Input-grad GEMV strips: about this many input columns (whole groups) per strip, so a strip's
// dx rows stay in L1 while every output row streams past.
constexpr int64_t kStripCols = 256;
// The chunked AVX2 kernels sum their strip in a buffer (M × strip floats, L1/L2) and walk every
// output row once per strip, a short strided read each: one strip per thread, within these bounds.
constexpr int64_t kChunkedStripMinCols = 1024;
constexpr int64_t kChunkedStripMaxCols = 8192;

thread_local int scalar_scopes = 0;

bool env_forces_scalar() {
  const char* env = std::getenv("ANVIL_QUANT_KERNELS");
  return env != nullptr && std::string(env) == "scalar";
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Code e (0-based within the row segment starting at byte p) of a `bits`-wide packing: the
// first element in the most significant bits of its byte.
inline int code_at(const uint8_t* p, int bits, int64_t e) {
  const int per = 8 / bits;
  const int shift = 8 - bits - static_cast<int>(e % per) * bits;
  return (p[e / per] >> shift) & ((1 << bits) - 1);
}

// Ŵ[o, g·block : (g+1)·block] into out.
void decode_group(const PackedWeight& w, int64_t o, int64_t g, float* out) {
  float table[16];
  w.group_table(o, g, table);
  const uint8_t* p = w.codes + o * w.row_bytes + g * w.block * w.bits / 8;
  for (int64_t e = 0; e < w.block; ++e) out[e] = table[code_at(p, w.bits, e)];
}

}  // namespace

float PackedWeight::nf4_absmax(int64_t b) const {
  if (absmax != nullptr) return absmax[b];
  return double_quant_absmax(dynamic_map[absmax_codes[b]], absmax_scales[b / kDoubleQuantBlock], absmax_offset);
}

void PackedWeight::group_table(int64_t o, int64_t g, float* table) const {
  const int64_t b = o * groups + g;
  if (nf4) {
    const float a = nf4_absmax(b);
    for (int c = 0; c < 16; ++c) table[c] = nf4_table[c] * a;
    return;
  }
  const float s = scales[b], z = zeros[b];
  for (int c = 0; c < (1 << bits); ++c) table[c] = s * (static_cast<float>(c) - z);
}

PackedWeight packed_weight(const QuantizedWeight& w, const char* op) {
  const std::string what = std::string(op) + ": w";
  check_quantized_weight(w, what);
  const auto cpu_array = [&](const char* name, const Tensor& t, DType dtype) {
    require_cpu_dtype(op, name, t, dtype);
    ANVIL_CHECK(t.is_contiguous(), op, ": w.", name, " ", t.describe(), " must be contiguous — call .contiguous()");
    return t.raw_data();
  };
  PackedWeight p;
  p.bits = quant_bits(w.scheme);
  p.nf4 = w.scheme == QuantScheme::NF4;
  p.out = w.out_features;
  p.in = w.in_features;
  p.block = w.block;
  p.groups = w.in_features / w.block;
  p.row_bytes = w.in_features * p.bits / 8;
  p.codes = static_cast<const uint8_t*>(cpu_array("packed", w.packed, DType::U8));
  if (p.nf4) {
    p.nf4_table = nf4_values();
    if (w.double_quant()) {
      p.absmax_codes = static_cast<const uint8_t*>(cpu_array("absmax_codes", w.absmax_codes, DType::U8));
      p.absmax_scales = static_cast<const float*>(cpu_array("absmax_scales", w.absmax_scales, DType::F32));
      p.absmax_offset = w.absmax_offset;
      p.dynamic_map = dynamic_map_signed();
    } else {
      p.absmax = static_cast<const float*>(cpu_array("absmax", w.absmax, DType::F32));
    }
  } else {
    p.scales = static_cast<const float*>(cpu_array("scales", w.scales, DType::F32));
    p.zeros = static_cast<const float*>(cpu_array("zeros", w.zeros, DType::F32));
  }
  return p;
}

bool quant_avx2_active() {
  static const bool cpu_has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const bool forced_scalar = env_forces_scalar();
  return cpu_has && !forced_scalar && scalar_scopes == 0;
}

ScalarQuantKernels::ScalarQuantKernels() { ++scalar_scopes; }
ScalarQuantKernels::~ScalarQuantKernels() { --scalar_scopes; }

namespace scalar {

void gemv(const PackedWeight& w, const float* x, int64_t ldx, int64_t rows, float* y, int64_t ldy, int64_t o0,
          int64_t o1, bool accumulate) {
  std::unique_ptr<float[]> group(new float[w.block]);
  float sum[kQuantFewRows];
  for (int64_t o = o0; o < o1; ++o) {
    std::fill(sum, sum + rows, 0.0f);
    for (int64_t g = 0; g < w.groups; ++g) {
      decode_group(w, o, g, group.get());
      for (int64_t m = 0; m < rows; ++m) {
        const float* xg = x + m * ldx + g * w.block;
        float s = 0.0f;
        for (int64_t e = 0; e < w.block; ++e) s += xg[e] * group[e];
        sum[m] += s;
      }
    }
    for (int64_t m = 0; m < rows; ++m) {
      float& out = y[m * ldy + o];
      out = accumulate ? out + sum[m] : sum[m];
    }
  }
}

void gemv_input_grad(const PackedWeight& w, const float* dy, int64_t lddy, int64_t rows, float* dx, int64_t lddx,
                     int64_t g0, int64_t g1, bool accumulate) {
  const int64_t k0 = g0 * w.block, width = (g1 - g0) * w.block;
  if (!accumulate)
    for (int64_t m = 0; m < rows; ++m) std::fill(dx + m * lddx + k0, dx + m * lddx + k0 + width, 0.0f);
  std::unique_ptr<float[]> group(new float[w.block]);
  for (int64_t o = 0; o < w.out; ++o)
    for (int64_t g = g0; g < g1; ++g) {
      decode_group(w, o, g, group.get());
      for (int64_t m = 0; m < rows; ++m) {
        const float d = dy[m * lddy + o];
        float* dxg = dx + m * lddx + g * w.block;
        for (int64_t e = 0; e < w.block; ++e) dxg[e] += d * group[e];
      }
    }
}

void dequantize_tile(const PackedWeight& w, int64_t o0, int64_t o1, int64_t g0, int64_t g1, float* out, int64_t ld) {
  for (int64_t o = o0; o < o1; ++o)
    for (int64_t g = g0; g < g1; ++g) decode_group(w, o, g, out + (o - o0) * ld + (g - g0) * w.block);
}

}  // namespace scalar

namespace {

void dequantize_tile(const PackedWeight& w, int64_t o0, int64_t o1, int64_t g0, int64_t g1, float* out, int64_t ld,
                     bool avx) {
  (avx ? avx2::dequantize_tile : scalar::dequantize_tile)(w, o0, o1, g0, g1, out, ld);
}

// y [rows, out] (+)= x · Ŵᵀ.
void forward(const PackedWeight& w, const Rows& x, const Rows& y, bool accumulate) {
  const bool avx = quant_avx2_active();  // read on the calling thread: a scope covers the workers
  if (x.rows <= kQuantFewRows) {
    // The AVX2 intN kernel wants each group's Σ x (the zero point's term), once per call.
    std::vector<float> group_sums;
    if (avx && !w.nf4) {
      group_sums.assign(static_cast<size_t>(x.rows * w.groups), 0.0f);
      for (int64_t m = 0; m < x.rows; ++m)
        for (int64_t g = 0; g < w.groups; ++g) {
          const float* xg = x.row(m) + g * w.block;
          float s = 0.0f;
          for (int64_t e = 0; e < w.block; ++e) s += xg[e];
          group_sums[static_cast<size_t>(m * w.groups + g)] = s;
        }
    }
    // The chunked AVX2 kernels read x in their decode order (a copy per call, [rows, in]).
    const float* xa = x.p;
    int64_t ldxa = x.ld;
    std::vector<float> permuted;
    if (avx && avx2::chunked(w)) {
      permuted.resize(static_cast<size_t>(x.rows * w.in));
      avx2::chunk_order_inputs(w, x.p, x.ld, x.rows, permuted.data());
      xa = permuted.data();
      ldxa = w.in;
    }
    constexpr int64_t kRowsPerTask = 16;
    const int64_t tasks = ceil_div(w.out, kRowsPerTask);
#pragma omp parallel for schedule(static) if (w.out * w.in >= kParallelMin && tasks > 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t o0 = t * kRowsPerTask, o1 = std::min(w.out, o0 + kRowsPerTask);
      if (avx)
        avx2::gemv(w, xa, ldxa, group_sums.data(), x.rows, y.p, y.ld, o0, o1, accumulate);
      else
        scalar::gemv(w, x.p, x.ld, x.rows, y.p, y.ld, o0, o1, accumulate);
    }
    return;
  }
  const int64_t tile_groups = std::max<int64_t>(1, kForwardTileCols / w.block);
  const int64_t tiles = ceil_div(w.out, kForwardTileRows), chunks = ceil_div(w.groups, tile_groups);
#pragma omp parallel if (tiles > 1)
  {
    // Inside the parallel region each sgemm runs on its own thread (OpenBLAS's OpenMP build).
    std::unique_ptr<float[]> buf(new float[kForwardTileRows * tile_groups * w.block]);
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t o0 = t * kForwardTileRows, o1 = std::min(w.out, o0 + kForwardTileRows);
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t g0 = c * tile_groups, g1 = std::min(w.groups, g0 + tile_groups);
        const int64_t cols = (g1 - g0) * w.block;
        dequantize_tile(w, o0, o1, g0, g1, buf.get(), cols, avx);
        const float beta = c == 0 && !accumulate ? 0.0f : 1.0f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(x.rows),
                    static_cast<blasint>(o1 - o0), static_cast<blasint>(cols), 1.0f, x.p + g0 * w.block,
                    static_cast<blasint>(x.ld), buf.get(), static_cast<blasint>(cols), beta, y.p + o0,
                    static_cast<blasint>(y.ld));
      }
    }
  }
}

// dx [rows, in] (+)= dy · Ŵ.
void input_grad(const PackedWeight& w, const Rows& dy, const Rows& dx, bool accumulate) {
  const bool avx = quant_avx2_active();
  if (dy.rows <= kQuantFewRows) {
    const int64_t strip_cols =
        avx && avx2::chunked(w)
            ? std::clamp<int64_t>(ceil_div(w.in, omp_get_max_threads()), kChunkedStripMinCols, kChunkedStripMaxCols)
            : kStripCols;
    const int64_t strip_groups = std::max<int64_t>(1, strip_cols / w.block);
    const int64_t strips = ceil_div(w.groups, strip_groups);
#pragma omp parallel for schedule(static) if (w.out * w.in >= kParallelMin && strips > 1)
    for (int64_t s = 0; s < strips; ++s) {
      const int64_t g0 = s * strip_groups, g1 = std::min(w.groups, g0 + strip_groups);
      (avx ? avx2::gemv_input_grad : scalar::gemv_input_grad)(w, dy.p, dy.ld, dy.rows, dx.p, dx.ld, g0, g1,
                                                               accumulate);
    }
    return;
  }
  const int64_t tile_groups = std::max<int64_t>(1, kInputGradTileCols / w.block);
  const int64_t tiles = ceil_div(w.groups, tile_groups), chunks = ceil_div(w.out, kInputGradTileRows);
#pragma omp parallel if (tiles > 1)
  {
    std::unique_ptr<float[]> buf(new float[kInputGradTileRows * tile_groups * w.block]);
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t g0 = t * tile_groups, g1 = std::min(w.groups, g0 + tile_groups);
      const int64_t cols = (g1 - g0) * w.block;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t o0 = c * kInputGradTileRows, o1 = std::min(w.out, o0 + kInputGradTileRows);
        dequantize_tile(w, o0, o1, g0, g1, buf.get(), cols, avx);
        const float beta = c == 0 && !accumulate ? 0.0f : 1.0f;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(dy.rows),
                    static_cast<blasint>(cols), static_cast<blasint>(o1 - o0), 1.0f, dy.p + o0,
                    static_cast<blasint>(dy.ld), buf.get(), static_cast<blasint>(cols), beta, dx.p + g0 * w.block,
                    static_cast<blasint>(dx.ld));
      }
    }
  }
}

// The checked [rows, features] views of an activation `a` (x or dy) and the product `c` (y or dx):
// a ends in a_cols features, c in c_cols, both with the same rows.
struct Operands {
  Rows a, c;
};

Operands operands(const char* op, const PackedWeight& w, const char* a_name, const Tensor& a, int64_t a_cols,
                  const char* c_name, const Tensor& c, int64_t c_cols) {
  Operands v{as_rows(op, a_name, a), as_rows(op, c_name, c)};
  ANVIL_CHECK(a.dim() >= 1 && v.a.cols == a_cols, op, ": ", a_name, " ", a.describe(), " must end in ", a_cols,
              " features for w [", w.out, ", ", w.in, "]");
  ANVIL_CHECK(c.dim() >= 1 && v.c.cols == c_cols && v.c.rows == v.a.rows, op, ": ", c_name, " ", c.describe(),
              " must hold ", v.a.rows, " rows of ", c_cols, " features (", a_name, " ", a.describe(), ", w [", w.out,
              ", ", w.in, "])");
  ANVIL_CHECK(!views_may_overlap(c, a), op, ": ", c_name, " ", c.describe(), " overlaps ", a_name, " ",
              a.describe(), " in memory — write the product into a separate buffer");
  return v;
}

}  // namespace
}  // namespace cpu

void quant_matmul(const Tensor& x, const QuantizedWeight& w, Tensor& y, bool accumulate) {
  ANVIL_DISPATCH_CUDA(x, quant_matmul, x, w, y, accumulate);
  constexpr const char* kOp = "quant_matmul";
  const cpu::PackedWeight p = cpu::packed_weight(w, kOp);
  const cpu::Operands v = cpu::operands(kOp, p, "x", x, p.in, "y", y, p.out);
  if (v.a.rows == 0) return;
  cpu::forward(p, v.a, v.c, accumulate);
}

void quant_matmul_input_grad(const Tensor& dy, const QuantizedWeight& w, Tensor& dx, bool accumulate) {
  ANVIL_DISPATCH_CUDA(dy, quant_matmul_input_grad, dy, w, dx, accumulate);
  constexpr const char* kOp = "quant_matmul_input_grad";
  const cpu::PackedWeight p = cpu::packed_weight(w, kOp);
  const cpu::Operands v = cpu::operands(kOp, p, "dy", dy, p.out, "dx", dx, p.in);
  if (v.a.rows == 0) return;
  cpu::input_grad(p, v.a, v.c, accumulate);
}

}  // namespace anvil::kernels
