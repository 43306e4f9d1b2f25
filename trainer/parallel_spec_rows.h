// ParallelSpec's group-wise training rows (ALGORITHMS.md §7) for task distill with
// distill.drafter: parallelspec. A data window x_0 .. x_{n-1} (slots from 0; targets[j] is the
// token after x_j) becomes one drafter row:
//   [x_0 .. x_{n-1}] [MASK_1 .. MASK_k of anchor t_1] ... [MASK_1 .. MASK_k of anchor t_a]
// with group ids -1 for the real tokens and t for anchor t's masks, so real tokens see only
// real tokens and mask i of anchor t sees x_0 .. x_t and masks 1 .. i of t (the kernels' group
// rule, models/step_context.h). Positions: x_j at j, mask i of anchor t at t + i.
// Labels: the real token x_j predicts targets[j] as in plain LM training; mask i of anchor t
// predicts x_{t+1+i} = targets[t + i], ignored past the window. The target model scores a slot
// with its own distribution at the real slot that predicts the same token: slot j for x_j,
// slot t + i for mask i of anchor t (teacher_slots). The target runs over the real tokens only.
// Anchors: `anchors` evenly spaced over 0 .. n - 2 (every slot whose mask 1 has a label), the grid
// shifted per row by an offset hashed from the row's tokens (so masks train at every position,
// and a row's anchors depend on its content only: the same under any layout or batch). The row
// has n + a·k slots, which must fit the drafter's positions.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "data/loader.h"
#include "models/step_context.h"
#include "models/transformer.h"
#include "trainer/config.h"

namespace anvil {

// The mask tokens a run's model has: distill.parallel_tokens for task distill with drafter
// parallelspec, else 0. load_model and the distill task add them (TransformerLM::add_mask_embeddings).
int64_t parallel_spec_masks(const RunConfig& config);

// The distill task's drafter gains its mask tokens (initialised from run.seed); when model.init_from
// is an anvil checkpoint of a ParallelSpec drafter with as many masks, its mask table is loaded
// too (build_trainable_lm loaded the rest), so training continues from a trained drafter.
void add_parallel_spec_masks(TransformerLM& drafter, const RunConfig& config);

// The anchors per row: `requested` (0: as many as fit n + a·k <= max_positions), at most n - 1.
// Throws naming distill.anchors_per_sequence / data.seq_len when not one anchor fits.
int64_t parallel_spec_anchor_count(int64_t n, int64_t masks, int64_t requested, int64_t max_positions);

// Anchor j of a (0-based) in a window of n real tokens with grid offset o in [0, n - 1):
// floor((j (n - 1) + o) / a) — strictly increasing, within 0 .. n - 2; a = n - 1 takes every slot.
int64_t parallel_spec_anchor(int64_t j, int64_t a, int64_t n, int64_t offset);
// The grid offset of a row of n tokens: an FNV-1a hash of its ids, modulo n - 1.
int64_t parallel_spec_offset(const int32_t* ids, int64_t n);

struct ParallelSpecRows {
  Batch drafter;         // ids (mask i = first_mask_id + i), targets and position_ids, each i32 [B, n + a·k]
  Tensor group_ids;      // i32 [B, n + a·k]: -1 real, the anchor's slot for a mask
  Tensor teacher_slots;  // i32 [B·(n + a·k)]: the row of the target's [B·n] outputs that scores each slot
};

// The rows for a window batch (ids and targets i32 [B, n], on the host, no packed documents).
// shifted = false: every row's grid offset is 0 (for tests that spell the layout out).
ParallelSpecRows parallel_spec_rows(const Batch& window, int64_t masks, int64_t anchors, int32_t first_mask_id,
                                    int32_t ignore_index, bool shifted = true);

// The drafter's side of one step, per micro-batch: its rows, their step contexts (group ids and
// positions, checked and on `device`) and the teacher slots (on `device`).
struct ParallelSpecStep {
  std::vector<Batch> rows;
  std::vector<std::shared_ptr<StepContext>> contexts;
  std::vector<Tensor> teacher_slots;
};
ParallelSpecStep parallel_spec_step(const std::vector<Batch>& windows, int64_t masks, int64_t anchors,
                                    int32_t first_mask_id, int32_t ignore_index, int64_t max_positions, Device device);

}  // namespace anvil
