// LoRA adapters in PEFT's format (peft 0.10's LoraConfig / save_pretrained), both ways:
//   DIR/adapter_model.safetensors  base_model.model.<module>.lora_A.weight [r, in] and
//                                  base_model.model.<module>.lora_B.weight [out, r], f32
//   DIR/adapter_config.json        peft_type LORA, r, lora_alpha, lora_dropout, use_rslora,
//                                  target_modules, base_model_name_or_path, ...
// anvil's adapter params are PEFT's names less `base_model.model.` (models/lora.h), and its
// scaling is PEFT's (α/r, or α/√r with use_rslora), so the factors travel unchanged.
//
// target_modules lists the distinct leaf names adapted (q_proj, v_proj) when every Linear with
// such a leaf name is adapted, else the full module names, so PEFT adapts exactly our modules.
// QA-LoRA (lora.qa_group > 0) has no PEFT form: its A reads the group-pooled input.
#pragma once
#include <string>
#include <vector>

#include "models/transformer.h"
#include "trainer/config.h"

namespace anvil {

// Writes `model`'s adapters (whole logical tensors: a model on one process) into `dir` (created;
// it must not hold an adapter already). `config` is the run's: its lora section and model.init_from
// (base_model_name_or_path).
void save_peft_adapter(TransformerLM& model, const RunConfig& config, const std::string& dir);

// Copies the PEFT adapter in `dir` into `adapters` (the params attach_lora returned; each rank
// takes its shard). adapter_config.json's r, lora_alpha and use_rslora must equal the lora
// section's; every tensor must be an adapter of a module we adapt, at its shape, and every adapter
// must be in the file. Anything else (another base, another rank, DoRA, trained biases) is an
// error naming the file, the tensor or field, and both values.
void load_peft_adapter(const std::vector<Param*>& adapters, const RunConfig& config, const std::string& dir);

}  // namespace anvil
