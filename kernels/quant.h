// Low-bit frozen weights (issue 17): the packed formats of a quantized Linear weight W [out, in]
// and the products that read them without materialising W in floats.
//
// Schemes (ALGORITHMS.md §9):
//   nf4   QLoRA's 4-bit NormalFloat: blocks of `block` (64) consecutive elements of the
//         flattened row-major W, one absmax per block; code = the nearest of the 16 NF4 values
//         to w / absmax (a value exactly on a midpoint goes to the lower code); ŵ = NF4[code]·absmax.
//         Double quantization stores the absmaxes as 8-bit codes of bitsandbytes' signed dynamic
//         map in blocks of 256 absmaxes, one f32 scale per such block, after subtracting their
//         mean (absmax_offset): absmax[b] = DYN[code[b]]·absmax_scale[b / 256] + absmax_offset.
//   int4, int2  group-wise asymmetric (AutoAWQ's pseudo_quantize_tensor): per group of `block`
//         consecutive input-dim weights of one output row, qmax = 2^bits − 1,
//         s = max(w_max − w_min, 1e-5) / qmax, z = clamp(rint(−w_min / s), 0, qmax),
//         q = clamp(rint(w / s) + z, 0, qmax), ŵ = s·(q − z). rint is round-half-to-even
//         (numpy's and torch's round). zeros are kept as f32, not packed: they are integers
//         after quantization and fractional after a QA-LoRA merge (z' = z − ΔW / s).
//         `zeros` holds z itself, in [0, qmax]: GPTQ-for-LLaMa/AutoGPTQ checkpoints pack
//         qzeros = z − 1 (add 1 when importing one), and AutoAWQ interleaves its nibbles.
//
// Packing, every scheme: codes of the flattened row-major W, `8 / bits` per byte, the first
// element in the most significant bits of its byte (bitsandbytes' NF4 order: element 2i is the
// high nibble of byte i). A row starts on a byte boundary because `in` is a multiple of the
// block, which is a multiple of 8.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace anvil::kernels {

enum class QuantScheme : uint8_t { NF4, Int4, Int2 };

int quant_bits(QuantScheme scheme);               // 4, 4, 2
const char* quant_scheme_name(QuantScheme scheme);  // "nf4", "int4", "int2"
// "nf4" | "int4" | "int2"; anything else throws naming `field` and the choices.
QuantScheme parse_quant_scheme(const std::string& name, const std::string& field);

// The 16 NF4 values, index 0..15 (−1 … 0 … 1), and bitsandbytes' signed dynamic 8-bit map
// (create_dynamic_map(signed=True), 256 values in [−1, 1], sorted) that double quantization uses.
const float* nf4_values();
const float* dynamic_map_signed();

// Absmaxes per f32 scale under double quantization (bitsandbytes' nested blocksize).
constexpr int64_t kDoubleQuantBlock = 256;
// A double-quantized absmax as bitsandbytes decodes it: DYN[code]·scale rounded to f32, then
// + offset in f32. The volatile keeps the compiler from fusing the two into one FMA (another rounding).
inline float double_quant_absmax(float dyn, float scale, float offset) {
  const volatile float product = dyn * scale;
  return product + offset;
}

// A quantized weight [out_features, in_features]: views of the tensors a LinearWeight holds as
// frozen Params (so checkpoints save them as they are). All on one device.
struct QuantizedWeight {
  QuantScheme scheme = QuantScheme::NF4;
  int64_t out_features = 0;
  int64_t in_features = 0;
  int64_t block = 64;     // nf4: absmax block over the flattened W; intN: group size along `in`
  Tensor packed;          // u8 [out * in * bits / 8]
  // nf4 without double quantization:
  Tensor absmax;          // f32 [out * in / block]
  // nf4 with double quantization (absmax undefined):
  Tensor absmax_codes;    // u8 [out * in / block]
  Tensor absmax_scales;   // f32 [ceil(absmax count / 256)]
  float absmax_offset = 0.0f;
  // int4 / int2:
  Tensor scales;          // f32 [out, in / block]
  Tensor zeros;           // f32 [out, in / block]

  bool double_quant() const { return absmax_codes.defined(); }
  int64_t numel() const { return out_features * in_features; }
  // Bytes the weight costs in memory (packed codes and every scale/zero/absmax tensor).
  int64_t bytes() const;
};

// Throws naming `what` when the shapes of w's tensors do not match its scheme, sizes and block
// (a checkpoint whose packed sizes do not match its shape), or the block does not divide `in`.
void check_quantized_weight(const QuantizedWeight& w, const std::string& what);

// Quantize a dense f32 W [out, in] (CPU). nf4: block 64 by default, `double_quant` as bitsandbytes'
// compress_statistics. intN: bits 4 or 2, group `block` (a divisor of `in`, multiple of 8).
// Throws naming `what` when the shape cannot take the scheme/block.
QuantizedWeight quantize_nf4(const Tensor& w, bool double_quant, int64_t block, const std::string& what);
QuantizedWeight quantize_groupwise(const Tensor& w, QuantScheme scheme, int64_t group, const std::string& what);

// Rows [row_begin, row_end) of Ŵ as f32 into out [row_end − row_begin, in] (CPU; CUDA for the
// f32 or bf16 `out` on a device).
void dequantize_rows(const QuantizedWeight& w, int64_t row_begin, int64_t row_end, Tensor& out);

// The f32 absmax of every block of an nf4 weight (CPU): `absmax` itself, or the double-quantized
// codes decoded as bitsandbytes decodes them (a split weight keeps its blocks' absmaxes this way:
// bitsandbytes' nested blocks run across the whole flattened tensor, not a shard of it).
Tensor nf4_absmax(const QuantizedWeight& w);

// GPTQ act order (data/quant_checkpoint.h): out[:, j] = x[:, perm[j]] for x [rows, in] and perm
// i32 [in], and its adjoint dx[:, perm[j]] += dp[:, j]. CPU and CUDA.
void permute_columns(const Tensor& x, const Tensor& perm, Tensor& out);
void unpermute_add_columns(const Tensor& dp, const Tensor& perm, Tensor& dx);

// y [rows, out] = x [rows, in] · Ŵᵀ, and the input gradient dx [rows, in] = dy [rows, out] · Ŵ
// (a frozen base needs no dW). CPU: f32, AVX2/FMA kernels chosen at run time with a scalar
// fallback; few rows read the packed codes directly (GEMV), many rows dequantize tiles of W into
// a small buffer for sgemm. CUDA: bf16 or f32 activations, f32 accumulation (W4A16).
// `accumulate` adds into y / dx instead of overwriting them.
void quant_matmul(const Tensor& x, const QuantizedWeight& w, Tensor& y, bool accumulate = false);
void quant_matmul_input_grad(const Tensor& dy, const QuantizedWeight& w, Tensor& dx, bool accumulate = false);

}  // namespace anvil::kernels
