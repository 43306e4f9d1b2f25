// A QA-LoRA run exported as a quantized Hugging Face model (issue 17: `anvil convert --from RUN
// --to gptq DIR --merge`). The run's base is rebuilt as it trained (model.init_from, then the quant
// section and the adapters: adapt_base), its checkpoint's adapters and packed base loaded, every
// adapter folded exactly into its layer's zero points (models/lora_merge.h merge_qa_lora), and the
// model written by write_quantized_hf (models/hf_quant.h): GPTQ tensors with f32 zeros
// (checkpoint_format "anvil_float_zeros", which anvil loads; GPTQ's integer qzeros cannot hold merged
// zeros). `naive` writes the requantizing merge instead (requantize_merged: integer zeros, a standard
// GPTQ directory AutoGPTQ/transformers load, but lossy) — the comparison users need.
// An NF4 (QLoRA) run or a plain-LoRA adapter cannot merge into a quantized base exactly: clear errors
// naming the dense merge (--to hf --merge) instead.
#pragma once
#include <memory>
#include <string>

#include "trainer/load_model.h"

namespace anvil {

// A LoRA run's model as it trained (load_model: base, quantized layers, adapters; frozen, on the
// CPU in f32, without its training data). Throws for a run without LoRA.
LoadedModel load_lora_run(const std::string& path);

struct QaLoraExport {
  std::string format;          // the checkpoint_format written
  int64_t layers = 0;          // adapters merged
  // Over the merged layers, the worst merge_output_error().max_rel on 64 random normal input rows,
  // of the exact merge and of the naive requantizing one: what each merge changes in a layer's output.
  double exact_max_rel = 0.0;
  double naive_max_rel = 0.0;
};
QaLoraExport export_qa_lora_merged(const std::string& run, const std::string& hf_dir, bool naive = false);

}  // namespace anvil
