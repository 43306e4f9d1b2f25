// RoutePlan: which tokens of a [B, T, C] activation a routed sub-block runs on, laid out as a
// compact batch (kernels/route_rows.h moves the rows). Layer-skip routers (models/layer_router.h)
// decide per sequence or per token; the block gathers the active rows, runs the sub-block on
// them alone and scatters the result back.
//
// Two layouts:
//  - per sequence (attention): compact row i holds the active tokens of one sequence in order,
//    [Bc, Tc] with Bc the sequences that have one and Tc the most any has; shorter rows are padded
//    at the end (index -1: zeros in, dropped out; causal attention keeps real tokens from seeing
//    them). A token-unit attention thus attends over its sequence's active tokens only, at their
//    real positions (compact_context gives the compact batch its position ids).
//  - token-local (feed-forward): one row [1, active] of every active token.
#pragma once
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "models/step_context.h"

namespace anvil {

struct RoutePlan {
  int64_t batch = 0, seq_len = 0;  // the full [B, T]
  int64_t rows = 0, cols = 0;      // the compact [Bc, Tc]
  int64_t active = 0;              // active tokens (rows of work the sub-block does, padding aside)
  std::vector<int32_t> index;      // host: full token (b * T + t) of each compact slot, -1 = padding
  Tensor device_index;             // the same, i32 on the activations' device
  bool all() const { return active == batch * seq_len; }
  bool none() const { return active == 0; }
};

// The plan of host f32 gates g [B, T] (0 / 1) for activations on `device`.
RoutePlan plan_routes(const Tensor& g, bool per_sequence, Device device);
// full [B, T, C] -> compact [Bc, Tc, C] (padding rows zero).
Tensor gather_active(const RoutePlan& plan, const Tensor& full);
// full [B, T, C] += compact scattered back to its tokens (padding dropped).
void scatter_active(const RoutePlan& plan, const Tensor& compact, Tensor& full);
// Per-token values (host f32 [B * T], zero where inactive) from per-slot values (host f32 [Bc * Tc]).
std::vector<float> scatter_values(const RoutePlan& plan, const float* per_slot);
// A per-sequence plan's StepContext: `ctx` with position ids and document ids of the compact
// batch (the tokens' real positions; undefined when each compact row is a whole sequence at the
// default positions), on `device`. Drafting groups are refused (their anchors refer to full rows).
std::shared_ptr<StepContext> compact_context(const RoutePlan& plan, const StepContext& ctx, Device device);
// The real positions of the compact slots (host i32 [Bc, Tc], padding 0) given the full batch's
// positions (host i32 [B, T]).
Tensor compact_positions(const RoutePlan& plan, const Tensor& positions);

}  // namespace anvil
