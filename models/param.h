// Param: one named model parameter with its gradient and the metadata that
// optimizers, freezing, adapters and sharding act on.
#pragma once
#include <string>

#include "core/tensor.h"

namespace anvil {

// Which optimizer family a param belongs to (DESIGN.md: matrix -> Muon/SOAP/COSMOS).
enum class ParamRole { Matrix, Vector, Embedding };
const char* param_role_name(ParamRole role);

// Which process-grid axis splits which logical dim (set by the parallel layers).
enum class GridAxis { None, DP, TP, PP, SP, EP };
struct ShardSpec {
  GridAxis axis = GridAxis::None;
  int dim = -1;  // logical dim split over `axis`; -1 when replicated
};

struct Param {
  std::string name;  // Hugging Face dotted name, e.g. model.layers.3.self_attn.q_proj.weight
  Tensor value;
  Tensor grad;       // undefined when frozen: frozen params cost no gradient memory
  bool trainable = true;
  ParamRole role = ParamRole::Vector;
  ShardSpec shard;

  Param(std::string name, Tensor value, ParamRole role);
  // Freezing drops the gradient buffer; unfreezing allocates a zeroed one.
  void set_trainable(bool on);
  void zero_grad();
};

}  // namespace anvil
