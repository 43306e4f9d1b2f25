// StepContext: what the modules of one forward/backward need besides their input tensor — the
// position ids, the attention mask description, the auxiliary losses modules add, and the
// sequence-parallel group of this micro-batch. One per micro-batch; the caller sets it on the
// root Cache (Cache::set_context) and every module reads it through its own Cache.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "kernels/attention.h"

namespace anvil {

class Communicator;

// The attention mask beyond causality (always on). The sliding window is the model's
// (AttentionShape::window) and combines with what is described here; see kernels/attention.h
// for the exact visibility rule.
struct AttentionMaskSpec {
  // Document boundaries of packed rows: i32 [B, T], one document id per token, non-decreasing
  // along each row (documents are contiguous runs). A query sees only keys of its own document.
  // Undefined: each row is one sequence (today's behaviour). Under Ulysses sequence parallelism
  // the attention sees whole sequences in another layout, so packed rows are refused there.
  Tensor segment_ids;
  // Drafting groups of ParallelSpec's group-wise training: i32 [B, T], -1 for a real token, the
  // slot of its anchor (an earlier real token of the row) for a [MASK] token. Real tokens see
  // only real tokens; a mask sees the real tokens up to its anchor and the masks of its anchor
  // up to itself (kernels/attention.h). The caller sets position_ids to match (mask i of
  // anchor t at position t + 1 + i). Undefined: every token is real. Refused under Ulysses
  // sequence parallelism, like segment_ids.
  Tensor group_ids;

  bool has_documents() const { return segment_ids.defined(); }
  bool has_groups() const { return group_ids.defined(); }
  // The kernel's mask description with the model's window.
  kernels::AttentionMask for_kernel(int64_t window) const { return {window, segment_ids, group_ids}; }
};

// A scalar loss a module adds during forward (MoE load balance, router capacity). `value` is
// what it reports; the module adds `weight * d(value)` to its own gradient in backward.
struct AuxLoss {
  std::string name;
  float value = 0.0f;
  float weight = 1.0f;
};

// Where a training micro-batch's rows lie in the step's global batch, and the Philox key of its
// dropout draws (LoRA's adapter dropout, models/lora.h). A draw is indexed by the logical element
// (global sequence, global position, logical column), never by rank, so every dp/tp/pp/sp layout
// drops the same elements. Inactive (the default): evaluation and inference drop nothing.
struct DropoutKey {
  bool active = false;
  uint64_t seed = 0;
  uint32_t draw = 0;            // the global micro-batch's number in the run: step x micro-batches + m
  int64_t first_sample = 0;     // this rank's first sequence in the global micro-batch (dp)
  int64_t first_position = 0;   // its sequence slice's first position (sp)
  int64_t local_len = 0;        // positions per sequence on this rank
  int64_t seq_len = 0;          // positions per global sequence
  // The global row of local row r of a [sequences x local_len, ...] activation.
  int64_t global_row(int64_t r) const {
    return (first_sample + r / local_len) * seq_len + first_position + r % local_len;
  }
};

// The gates of layer-skip routers (models/layer_router.h) in one forward, for the capacity
// statistics: every MindSkip router adds its units' gates here (this rank's micro-batch, this stage).
struct RouterGateStats {
  double gate_sum = 0;  // sum of g over every router unit of this stage's router layers
  double units = 0;     // number of (layer, unit) pairs counted (sequence unit: B per layer; token: B x T)
  // The same per router, keyed by its weight's name (e.g. model.layers.3.router.weight): {gate_sum, units}.
  std::map<std::string, std::pair<double, double>> per_router;
};

struct StepContext {
  // i32 [B, T] on the model's device: the position of each token (of this rank's slice under
  // sequence parallelism: its global positions). Undefined: positions start .. start + T - 1,
  // start being the slice's first position (0 without sequence parallelism).
  Tensor position_ids;
  AttentionMaskSpec mask;
  // The sp group this micro-batch uses (null: the model's own, or none). A model built with a
  // fixed sp communicator refuses a different one here.
  Communicator* sp = nullptr;
  DropoutKey dropout;  // training only
  // Layer-skip routers: forward adds the gates here; backward adds router_capacity_grad, the
  // capacity penalty's dObjective/dg (the same for every unit and layer, loss scale included,
  // set by the task between forward and backward), to each unit's dL/dg.
  RouterGateStats router_stats;
  float router_capacity_grad = 0.0f;
  // A training forward (one that feeds a backward; set by the router task): MindSkip routers with
  // train_skipped then compute their skipped units too (RouterSpec::train_skipped). Otherwise
  // (evaluation, plain forwards) they skip for real.
  bool router_training = false;
  // ---- Dr.LLM block actions (models/drllm_router.h) ----
  // Forced per-sequence actions of every global layer, host i32 [B, num_layers] (0 skip, 1 execute,
  // 2 repeat): the label path of router training, or a search candidate. Undefined: routed layers
  // follow their routers' argmax, the others execute.
  Tensor layer_actions;
  // Filled by forward: each routed layer's router input, the windowed means [B, W', hidden] of the
  // layer's input (detached; compute dtype, model device), in layer order. The caller clears it.
  struct DrLLMRouterInput {
    int64_t layer = 0;
    Tensor means;
  };
  std::vector<DrLLMRouterInput> drllm_inputs;
  // ---- end Dr.LLM ----

  void add_aux_loss(AuxLoss loss) { aux_losses_.push_back(std::move(loss)); }
  const std::vector<AuxLoss>& aux_losses() const { return aux_losses_; }
  // The losses added since the last call, handed to the caller and forgotten here.
  std::vector<AuxLoss> take_aux_losses();
  // The sum of weight * value over the losses added so far.
  float weighted_aux_loss() const;

  // Moves the tensors to `device` (the host builds them; the model may live on a GPU).
  void to(Device device);

 private:
  std::vector<AuxLoss> aux_losses_;
};

// Position ids that restart at 0 at each document of segment_ids (i32 [B, T], non-decreasing
// along each row): token t of a document starting at slot s gets t - s. On the CPU; throws
// naming the row and slot where ids decrease.
Tensor positions_from_segments(const Tensor& segment_ids);

// Position ids for drafting groups (group_ids i32 [B, T] as in AttentionMaskSpec, valid; segment_ids
// optional, as there): a real token gets the number of real tokens before it in its document, and
// the i-th mask (from 0, in slot order) of anchor a gets a's position + 1 + i, the position of
// the token it drafts. On the CPU; throws on invalid ids as check_step_context does.
Tensor positions_from_groups(const Tensor& group_ids, const Tensor& segment_ids = Tensor());

// Throws unless position_ids / segment_ids / group_ids (if defined) fit a [B, T] micro-batch:
// i32, contiguous, positions in [0, max_positions), segment ids non-decreasing along each row,
// group ids valid (kernels::check_group_ids: in [-1, T), each mask's anchor a real token before it).
// `where` names the caller in the message. Checks on the host (copies a device tensor there).
void check_step_context(const StepContext& ctx, int64_t B, int64_t T, int64_t max_positions, const char* where);

}  // namespace anvil
