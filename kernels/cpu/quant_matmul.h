// The CPU quantized products' pieces (kernels/quant.h's quant_matmul and quant_matmul_input_grad):
// a checked view of a QuantizedWeight's arrays, the scalar kernels, the AVX2/FMA kernels
// (kernels/cpu/quant_matmul_avx2.cpp, compiled for that target and chosen at run time), and a
// switch that forces the scalar path so tests and benches can compare both on one machine.
#pragma once
#include <cstdint>

#include "kernels/quant.h"

namespace anvil::kernels::cpu {

// Up to this many activation rows the products read the packed codes directly (GEMV); more rows
// dequantize tiles of W into a small buffer for sgemm.
constexpr int64_t kQuantFewRows = 8;

// A QuantizedWeight's arrays as raw pointers (after check_quantized_weight).
struct PackedWeight {
  int bits = 4;
  bool nf4 = true;
  int64_t out = 0, in = 0, block = 0;
  int64_t groups = 0;     // per row: in / block
  int64_t row_bytes = 0;  // in * bits / 8
  const uint8_t* codes = nullptr;
  // nf4: absmax per block, or its double-quantized form.
  const float* absmax = nullptr;
  const uint8_t* absmax_codes = nullptr;
  const float* absmax_scales = nullptr;
  float absmax_offset = 0.0f;
  const float* nf4_table = nullptr;
  const float* dynamic_map = nullptr;
  // int4 / int2: one scale and zero per (row, group).
  const float* scales = nullptr;
  const float* zeros = nullptr;

  // The dequantized value of every code of group g of row o: table[c] for c < 2^bits, the same
  // f32 operations as dequantize_rows (NF4[c]·absmax, s·(c − z)).
  void group_table(int64_t o, int64_t g, float* table) const;
  float nf4_absmax(int64_t block_index) const;
};

PackedWeight packed_weight(const QuantizedWeight& w, const char* op);

// The kernels, each over part of the work so the callers split it between threads.
// Forward GEMV: y[m, o] (+)= x[m, :] · Ŵ[o, :] for m < rows, o in [o0, o1).
// Input-grad GEMV: dx[m, k] (+)= Σ_o dy[m, o] Ŵ[o, k] for m < rows and k in groups [g0, g1).
// Tile: Ŵ[o0:o1, g0·block : g1·block] into out (row stride ld).
namespace scalar {
void gemv(const PackedWeight& w, const float* x, int64_t ldx, int64_t rows, float* y, int64_t ldy, int64_t o0,
          int64_t o1, bool accumulate);
void gemv_input_grad(const PackedWeight& w, const float* dy, int64_t lddy, int64_t rows, float* dx, int64_t lddx,
                     int64_t g0, int64_t g1, bool accumulate);
void dequantize_tile(const PackedWeight& w, int64_t o0, int64_t o1, int64_t g0, int64_t g1, float* out, int64_t ld);
}  // namespace scalar
namespace avx2 {
// Whether the chunked 4-bit kernels take w (int4 with block % 32 == 0, nf4 with block % 64 == 0):
// their forward reads x permuted by chunk_order_inputs into out [rows, in] (ld = in) in its place.
bool chunked(const PackedWeight& w);
void chunk_order_inputs(const PackedWeight& w, const float* x, int64_t ldx, int64_t rows, float* out);
// x_group_sums [rows, in / block]: Σ of each group of x's row (intN only; nf4 ignores it).
void gemv(const PackedWeight& w, const float* x, int64_t ldx, const float* x_group_sums, int64_t rows, float* y,
          int64_t ldy, int64_t o0, int64_t o1, bool accumulate);
void gemv_input_grad(const PackedWeight& w, const float* dy, int64_t lddy, int64_t rows, float* dx, int64_t lddx,
                     int64_t g0, int64_t g1, bool accumulate);
void dequantize_tile(const PackedWeight& w, int64_t o0, int64_t o1, int64_t g0, int64_t g1, float* out, int64_t ld);
}  // namespace avx2

// Whether the AVX2/FMA kernels run: the CPU has AVX2 and FMA, ANVIL_QUANT_KERNELS is not
// "scalar", and no ScalarQuantKernels scope is open on this thread.
bool quant_avx2_active();

// Forces the scalar kernels on this thread while it lives (tests, benches).
class ScalarQuantKernels {
 public:
  ScalarQuantKernels();
  ~ScalarQuantKernels();
  ScalarQuantKernels(const ScalarQuantKernels&) = delete;
  ScalarQuantKernels& operator=(const ScalarQuantKernels&) = delete;
};

}  // namespace anvil::kernels::cpu
