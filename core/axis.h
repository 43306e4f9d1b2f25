// Axis: the named axes of the process grid (parallel/grid.h), which ShardSpec (core/param.h)
// also uses to say which axis splits which dim of a param. Below parallel/ so models and
// optimizers can name an axis without knowing the grid.
#pragma once

namespace anvil {

// dp: data, tp: tensor, pp: pipeline, sp: sequence (Ulysses), ep: expert (carved out of dp;
// see parallel/grid.h for the rank order).
enum class Axis { DP, TP, PP, SP, EP };
inline constexpr int kAxisCount = 5;

inline const char* axis_name(Axis axis) {
  switch (axis) {
    case Axis::DP: return "dp";
    case Axis::TP: return "tp";
    case Axis::PP: return "pp";
    case Axis::SP: return "sp";
    case Axis::EP: return "ep";
  }
  return "?";
}

}  // namespace anvil
