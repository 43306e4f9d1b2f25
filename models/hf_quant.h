// Quantized Hugging Face model directories (issue 17): a model whose Linear layers are stored
// pre-quantized, read into anvil's quantized LinearWeights and written back. The per-Linear tensor
// formats are data/quant_checkpoint.h; this file maps them onto a TransformerLM and config.json.
//
// Reading (load_hf_dir, which every HF-directory reader uses: load_model, load_init_weights):
// config.json's "quantization_config" names the method —
//   {"quant_method": "gptq", "bits", "group_size" (-1: one group over `in`), "desc_act", "sym",
//    "checkpoint_format": "gptq" | "gptq_v2" | "anvil_float_zeros"}
//   {"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4", ...}
// and each Linear whose tensors the file holds in that form (detect_hf_quant_format) is installed
// with LinearWeight::set_quantized (GPTQ act order: with its perm); every other param loads dense
// (load_hf_weights). All tensors are read and checked against the model's shapes before the model
// changes. GPTQ sym true just means z = 2^(b−1) for every group: anvil holds any integer zero.
//
// Writing (write_quantized_hf): a model whose quantized Linears share one scheme and block —
//   int4/int2 → GPTQ: qweight, qzeros, scales, g_idx; quantization_config {quant_method gptq, bits,
//     group_size, desc_act (act order kept as g_idx), sym false, checkpoint_format "gptq"}.
//     Loads in AutoGPTQ, transformers (optimum + auto-gptq) and anvil. Scales are written f32 so
//     anvil reads back the exact weight; GPTQ kernels cast them to f16 on load, as they do any f32.
//   int4/int2 with fractional zeros (QA-LoRA's exact merge, models/lora_merge.h) → checkpoint_format
//     "anvil_float_zeros": GPTQ's tensors with `<module>.zeros` f32 [in/g, out] in place of qzeros.
//     Loads in anvil only (GPTQ's integer qzeros cannot hold the merged zeros; the naive requantizing
//     merge is the lossy route for other consumers).
//   nf4 → bitsandbytes' serialisation (Linear4bit state dict, quant_state dtype float32);
//     quantization_config {quant_method bitsandbytes, load_in_4bit, bnb_4bit_quant_type nf4,
//     bnb_4bit_use_double_quant, bnb_4bit_compute_dtype float32}. Loads in transformers with
//     bitsandbytes (a CUDA build) and anvil.
// Dense params (embeddings, norms, unquantized Linears such as lm_head) are written as save_hf writes them.
#pragma once
#include <map>
#include <string>

#include "data/quant_checkpoint.h"
#include "kernels/quant.h"

namespace anvil {

class TransformerLM;
class Tokenizer;

// config.json's quantization_config: the method and (GPTQ) its parameters. format None when the
// file has none. Methods other than gptq and bitsandbytes-nf4 throw naming the field.
struct HfQuantization {
  HfQuantFormat format = HfQuantFormat::None;
  GptqConfig gptq;                 // format Gptq
  bool bnb_double_quant = false;   // format BnbNF4 (bitsandbytes' own tensors describe the weight)
};
HfQuantization read_hf_quantization(const std::string& dir);

// An HF directory's weights into `model` (built from its config.json): quantized Linears through
// set_quantized, the rest dense. Errors name the file, tensor, and both shapes.
void load_hf_dir(TransformerLM& model, const std::string& dir);

// Writes `model` (whole, unsharded, on any device) as an HF directory in the format above. `merged`:
// replacement weights by module name (QA-LoRA-merged ones); a Linear with an adapter must have one.
// Returns the checkpoint_format written ("gptq", "anvil_float_zeros") or "bitsandbytes".
std::string write_quantized_hf(const TransformerLM& model, const Tokenizer* tokenizer, const std::string& dir,
                               const std::map<std::string, kernels::QuantizedWeight>& merged = {});

}  // namespace anvil
