// A quantized frozen base (the quant section, trainer/config.h): which Linear layers hold their
// weights quantized, and quantizing them on load. The formats and products are kernels/quant.h;
// a LinearWeight holds the result (LinearWeight::set_quantized).
//
// Quantization is applied after model.init_from's dense weights are loaded, one layer at a time,
// each dense weight freed as its quantized form replaces it: the full-precision base exists once,
// never twice. Each layer quantizes its whole logical weight (gathered over tp when split) and keeps
// its shard, so every layout computes with the same codes, scales and absmaxes as one process.
#pragma once
#include <string>

#include "models/transformer.h"
#include "trainer/config.h"

namespace anvil {

class Communicator;

// Whether the quant section quantizes Linear `module` (HF name without ".weight"): a modules
// pattern matches it and no skip pattern does (lora.modules' rule: trainer/lora.h).
bool quant_matches(const QuantSection& quant, const std::string& module);

// Quantizes every Linear of `model` the quant section matches (nothing when it is off). `tp`: the
// model's tensor-parallel communicator (null when whole); `pp`: the pipeline (a modules pattern
// must match on some stage; one that matches no Linear is an error listing them).
void quantize_model(TransformerLM& model, const RunConfig& config, Communicator* tp, Communicator* pp);

}  // namespace anvil
