// The parallel layout checks that need the model: whether the grid's degrees (parallel/grid.h)
// fit the model's heads, layers, vocabulary and experts. Run before any collective, on every
// rank alike, so a bad layout fails everywhere with the same message.
#pragma once
#include "models/config.h"
#include "parallel/grid.h"

namespace anvil {

// The model's routed experts (MoE); 0 for a dense model. ModelConfig has no MoE fields yet,
// so every model is dense until MoE lands.
int64_t model_experts(const ModelConfig& model);

// tp must divide the heads, KV heads, vocabulary and intermediate size; sp the KV heads of
// each tp rank (Ulysses splits whole heads, so sp <= num_key_value_heads / tp; the error
// lists the degrees that work); pp the layer count; ep must divide dp and the expert count,
// and a dense model takes ep = 1. Each failure names the degree, the model field and both numbers.
void validate_layout(const GridDims& dims, const ModelConfig& model);

}  // namespace anvil
