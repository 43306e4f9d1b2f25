// LoRA on a run's model (the lora section, trainer/config.h): which Linear layers get an adapter,
// attaching them to the frozen base, and the dropout key of a training micro-batch. The adapter
// itself is models/lora.h; build_adaptable_lm (trainer/lm_task.h) calls these for LMTask (lm, sft) and
// DistillTask's standalone drafter (LREC).
//
// A LoRA run builds its base frozen (FrozenParamScope: its weights only, no gradient or optimizer
// state) from model.init_from, then attaches the adapters, which alone train; its checkpoints hold
// the adapters only (`<module>.lora_A.weight` / `.lora_B.weight`, PEFT's names less
// `base_model.model.`), and a resume rebuilds the base from model.init_from again.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "models/step_context.h"
#include "models/transformer.h"
#include "trainer/config.h"

namespace anvil {

// Whether a lora.modules pattern adapts the Linear named `module` (its HF name, without
// ".weight"): "all-linear" matches every Linear but lm_head; any other pattern is a glob
// (core/glob.h) matching the whole name or its tail after a dot, as PEFT's target_modules does
// (q_proj matches model.layers.3.self_attn.q_proj; "layers.0.*" matches model.layers.0.mlp.up_proj).
bool lora_pattern_matches(const std::string& pattern, const std::string& module);

// Attaches an adapter to every Linear of `model` that a lora.modules pattern matches, initialises
// the adapters (Philox keyed by run.seed and the param name: layout-independent) and returns
// their params. Every pattern must match some Linear of the model (under pipeline parallelism,
// `pp` non-null, of some stage: a collective over it); one that matches none is an error listing
// the Linear names.
std::vector<Param*> attach_lora(TransformerLM& model, const RunConfig& config, Communicator* pp);

// A LoRA run's base made ready for training or use, after model.init_from's weights are loaded:
// the quant section's Linears quantized (trainer/quant.h), then the adapters attached (attach_lora).
// Returns the adapter params. Training (LMTask), load_model and convert all build a run this way.
std::vector<Param*> adapt_base(TransformerLM& model, const RunConfig& config, Communicator* tp, Communicator* pp);

// What a LoRA run's checkpoint holds: the adapters, and a quantized base's packed codes and scales
// as they are (keep_dtype params); the dense frozen weights reload from model.init_from. LMTask
// saves these and load_model reads them back.
std::vector<Param*> lora_checkpoint_params(TransformerLM& model, const std::vector<Param*>& adapters);

// The dropout key of training micro-batch m (of M) at step `step`, whose ids are this rank's
// [B, T] slice: seed run.seed, rows placed by this rank's coordinates in the data group
// (`data_group`: dp x sp, ordered dp_i * sp + sp_i; null when alone; `sp_size` its sp degree).
DropoutKey lora_dropout_key(const RunConfig& config, int64_t step, int64_t m, int64_t M, const Tensor& ids,
                            Communicator* data_group, int sp_size);

}  // namespace anvil
