// Pre-quantized Hugging Face checkpoints (issue 17): per Linear `name` (the dotted prefix, e.g.
// "model.layers.0.mlp.down_proj"), conversion between anvil's kernels::QuantizedWeight and the two
// formats users already hold, read from and written to a safetensors tensor map. Knows no model:
// the caller maps names and compares [out, in] with its layer.
//
// bitsandbytes NF4 (transformers' Linear4bit state dict, bitsandbytes QuantState.as_dict(packed=True)):
//   name.weight                                 u8 [n/2, 1]  codes of the flattened W, first element in
//                                               the high nibble (anvil's packing, byte for byte)
//   name.weight.absmax                          f32 [n/64], or u8 [n/64] dynamic-map codes when nested
//   name.weight.quant_map                       f32 [16]   the NF4 table (bitwise ours)
//   name.weight.nested_absmax                   f32 [ceil(n/64/256)]   nested only
//   name.weight.nested_quant_map                f32 [256]  the signed dynamic map, nested only
//   name.weight.quant_state.bitsandbytes__nf4   u8 [len]   JSON {"quant_type": "nf4", "blocksize": 64,
//       "dtype": "bfloat16", "shape": [out, in], and when nested "nested_blocksize": 256,
//       "nested_dtype": "float32", "nested_offset": mean of the absmaxes}
//   Read: nf4, block 64, nested block 256, quant_storage uint8 only. bitsandbytes builds the nested
//   map with torch's f32 linspace, which may differ from ours by an ulp or two (see
//   quant_format.cpp); a nested_quant_map within 2 ulps of ours is accepted and ours decodes it.
//
// GPTQ (AutoGPTQ / transformers, the "cuda-old"/"exllama" packing), bits b ∈ {4, 2}, group g:
//   name.qweight  i32 [in·b/32, out]   code of W[o, i] = qweight[i / (32/b), o] >> (b·(i % (32/b))) & (2^b − 1)
//   name.qzeros   i32 [in/g, out·b/32] field f of (group k, output o) packed the same way along `out`
//   name.scales   f16 [in/g, out]      (bf16 and f32 are read too); Ŵ[o, i] = s·(q − z)
//   name.g_idx    i32 [in]             group of input column i (absent: i / g)
//   checkpoint_format "gptq" (AutoGPTQ, v1): f = (z − 1) mod 2^b, and every GPTQ kernel and the
//   torch fallback decode z = (f + 1) mod 2^b — so z = 0 is f = 2^b − 1 (AutoGPTQ's own packer
//   sign-extends that −1 into the higher fields; ours masks it). "gptq_v2" (GPTQModel): f = z.
//   "anvil_float_zeros" (anvil's own extension, read by anvil only): name.zeros f32 [in/g, out]
//   holds z itself in place of qzeros — any finite value, as QA-LoRA's merge leaves it (fractional,
//   possibly outside [0, 2^b − 1]), which no integer qzeros can hold.
//
// Act order (desc_act, g_idx ≠ i / g): the groups are sets of columns. read_gptq returns the weight
// in anvil's contiguous-group layout, Ŵ_ours[:, j] = Ŵ[:, perm[j]], with perm (i32 [in]) the
// stable sort of the columns by g_idx, so y = x · Ŵᵀ = x[:, perm] · Ŵ_oursᵀ: gather the input
// columns by perm before the quantized product (and scatter-add dx back through perm).
#pragma once
#include <cstdint>
#include <string>

#include "data/safetensors.h"
#include "kernels/quant.h"

namespace anvil {

// Which pre-quantized format holds Linear `name` in `tensors` (by its tensor names only).
enum class HfQuantFormat { None, BnbNF4, Gptq };

// GptqConfig::checkpoint_format of anvil's f32-zeros extension (see above).
inline constexpr const char* kAnvilFloatZeros = "anvil_float_zeros";
HfQuantFormat detect_hf_quant_format(const TensorMap& tensors, const std::string& name);

// The tensors of Linear `name` in a checkpoint (every tensor named `name.*`), as views.
TensorMap linear_tensors(const SafetensorsIndex& checkpoint, const std::string& name);

// ---- bitsandbytes NF4 ----
struct BnbNF4Weight {
  kernels::QuantizedWeight weight;  // views on `tensors` where the bytes are already ours
  std::string dtype;                // quant_state "dtype": what bitsandbytes dequantizes to
};

// Every problem (a missing or extra companion tensor, a dtype or shape that does not match the
// JSON's shape, JSON that is not what bitsandbytes writes, fp4, another block size) throws an
// anvil::Error naming `source`, the tensor and what anvil supports.
BnbNF4Weight read_bnb_nf4(const TensorMap& tensors, const std::string& name, const std::string& source);
BnbNF4Weight read_bnb_nf4(const SafetensorsIndex& checkpoint, const std::string& name);

// Adds Linear `name`'s tensors to `out` (an nf4 weight with block 64, nested or not); `dtype`
// ("bfloat16", "float16" or "float32") is what bitsandbytes will dequantize to.
void write_bnb_nf4(const kernels::QuantizedWeight& w, const std::string& dtype, const std::string& name,
                   TensorMap& out);

// ---- GPTQ ----
// quantize_config.json (or config.json's "quantization_config"), the fields anvil needs.
struct GptqConfig {
  int bits = 4;
  int64_t group_size = 128;  // -1: one group over all of `in`
  bool desc_act = false;
  bool sym = false;
  std::string checkpoint_format = "gptq";  // "gptq" (qzeros = z − 1), "gptq_v2" (qzeros = z), kAnvilFloatZeros
};

// Parses quantize_config.json or a config.json holding "quantization_config"; a missing
// checkpoint_format (GPTQModel: "format") means "gptq", a missing sym true (AutoGPTQ's default).
GptqConfig parse_gptq_config(const std::string& json_text, const std::string& source);
// quantize_config.json for a consumer: bits, group_size, desc_act, sym, quant_method, checkpoint_format.
std::string gptq_config_json(const GptqConfig& config);

struct GptqWeight {
  kernels::QuantizedWeight weight;  // int4/int2, contiguous groups of config.group_size
  Tensor perm;                      // i32 [in] under act order (see above); undefined when g_idx = i / g
};

GptqWeight read_gptq(const TensorMap& tensors, const std::string& name, const GptqConfig& config,
                     const std::string& source);
GptqWeight read_gptq(const SafetensorsIndex& checkpoint, const std::string& name, const GptqConfig& config);

// Adds name.qweight, name.qzeros, name.scales (as `scales_dtype`: F16, GPTQ's, rounds each scale to
// nearest; BF16; F32 keeps ours bitwise) and name.g_idx to `out`. `perm` (optional, i32 [in]) is
// read_gptq's: the file then holds W's original column order with g_idx[perm[j]] = j / g.
// config must match w (bits, group_size, desc_act when perm is given); zeros must be integers in
// [0, 2^b − 1] unless config.checkpoint_format is kAnvilFloatZeros (QA-LoRA's merged fractional
// zeros), which writes name.zeros f32 in place of name.qzeros.
void write_gptq(const kernels::QuantizedWeight& w, const Tensor& perm, const GptqConfig& config, DType scales_dtype,
                const std::string& name, TensorMap& out);

}  // namespace anvil
