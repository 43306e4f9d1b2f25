// EagleDrafter: an EAGLE-3 style drafter for speculative decoding (issue 14, drafter kind 3). It
// drafts from the frozen target's own hidden states instead of from tokens alone.
//
// Architecture (h = the target's hidden size):
//   feature_t = fc(concat(taps_t))             eagle.fc: 3h -> h, no bias. taps: the outputs of
//                                               three target layers (low, middle, high; default
//                                               {1, L/2, L-2}) at position t, as EAGLE-3 fuses them
//   u_t       = input_proj(concat(embed(x_{t+1}), feature_t))   eagle.input_proj: 2h -> h, no bias
//   h_t       = decoder layer(u)_t              one block of the target's family (its norm,
//                                               attention and MLP: the family's TransformerBlock)
//   logits_t  = lm_head(norm(h_t))              predicts x_{t+2}
// The embedding and the LM head are the target's, frozen and shared (not copies, and not in the
// drafter's checkpoint). EAGLE-3 feeds the 2h concatenation straight into the layer's q/k/v; we
// project it to h first (EAGLE-1's fc placement) so the layer is the family's standard block,
// reused unchanged with its KV cache and kernels. Positions: the block's RoPE (or none for
// learned-position families: the target's features carry the position).
//
// Training-time test (EAGLE-3), `steps` unrolled steps over a window of T tokens. Step 0 at
// column t reads the target's feature at t and token x_{t+1}; step s >= 1 at column t reads the
// drafter's own pre-norm output h of step s-1 at column t (its guess of the feature at t+s) and
// token x_{t+1+s}, and predicts x_{t+2+s}. Its attention sees the step-0 entries of columns
// <= t and its own column's entries of steps 1..s, which is what it sees when decoding (the
// accepted prefix, then its own chain). Step s runs the block over the packed sequence of steps
// 0..s with the drafting-group mask of models/step_context.h (step j of column t is mask j of
// anchor t, at position t + j); only the last segment's output is new. Columns whose token or
// label falls past the window are padding (their label is ignore_index).
//
// Tensor parallelism: built on a tp-sharded target, the drafter is split like it — the block's
// heads and MLP width as the target's blocks, the shared embedding and head vocab-parallel (the
// logits are this rank's vocabulary shard) — while fc, input_proj and the final norm are
// replicated: their inputs (the target's taps, the all-reduced embedding, the block's output)
// and output gradients are the same on every tp rank, so are their gradients (as the norms').
// The training-time-test steps feed back hidden states, replicated too: nothing vocab-sized.
// No sp or pipeline split; decoding (forward_cached) runs in one process.
#pragma once
#include <memory>
#include <vector>

#include "models/layers.h"
#include "models/transformer.h"

namespace anvil {

class EagleDrafter {
 public:
  static constexpr int64_t kMaxTrainSteps = 8;  // training-time-test steps (EAGLE-3 trains 7)
  // EAGLE-3's choice of low, middle and high layer for a target of `num_layers` layers.
  static std::vector<int64_t> default_layers(int64_t num_layers);

  // target: the frozen target, one stage, no sp (tp is fine), built where the drafter runs;
  // layers: the three target layers whose outputs are fused, each in [0, L). Throws naming
  // distill.eagle_layers when one is out of range. The drafter's own weights start from Philox
  // (init_weights) or a checkpoint.
  EagleDrafter(TransformerLM& target, std::vector<int64_t> layers);
  EagleDrafter(const EagleDrafter&) = delete;
  EagleDrafter& operator=(const EagleDrafter&) = delete;

  const std::vector<int64_t>& layers() const { return layers_; }
  TransformerLM& target() { return target_; }
  // The model the trainer drives: the one-layer body (block, final norm, the target's embedding
  // and head shared and frozen) with fc and input_proj attached.
  TransformerLM& body() { return *body_; }
  // What trains and what a checkpoint holds: fc, input_proj, the block and the final norm.
  std::vector<Param*> own_params();
  // Fresh weights of the own params from Philox keyed by (seed, name), as TransformerLM's rule.
  void init_weights(uint64_t seed);
  // Points the body's embedding and head at the target's (again after the
  // body moved to another device: body().to copies).
  void share_target_weights();

  // ---- Training (forward_train saves into c; backward_train reads it) ----
  // ids i32 [B, T] on the device: the window's tokens; taps: the target's outputs of layers()
  // [B, T, h] for these ids. Returns the normed hidden states of every step,
  // [B, steps * T, h] (step s's columns at s*T ..), which the LM head (body().forward_head)
  // turns into logits.
  Tensor forward_train(const Tensor& ids, const std::vector<Tensor>& taps, int64_t steps, Cache& c);
  // dnormed [B, steps * T, h]: the gradient of forward_train's output -> accumulates the own
  // params' gradients. Clears c.
  void backward_train(const Tensor& dnormed, Cache& c);
  // What step s at column t is scored against, given the window's per-position rows
  // (targets i32 [B, T]: targets[t] the label of position t; or the target's logits [B, T, V]):
  // row t + 1 + s, or (past the window) ignore_index / zeros. Host or device; result like it.
  static Tensor step_labels(const Tensor& targets, int64_t steps, int ignore_index);
  static Tensor step_rows(const Tensor& rows, int64_t steps);

  // ---- Decoding (eval/eagle_drafter.cpp drives these) ----
  // The fused feature of tapped states [B, T, h] each (inference, nothing saved).
  Tensor fuse(const std::vector<Tensor>& taps);
  // One cached call: tokens i32 [B, T], features [B, T, h] (fused, or the drafter's own outputs)
  // -> the pre-norm outputs [B, T, h], appending T entries to kv (a KVCache of body()'s config)
  // at the positions it gives.
  Tensor forward_cached(const Tensor& tokens, const Tensor& features, KVCache& kv);
  // Logits [B, T, V] of pre-norm outputs.
  Tensor logits(const Tensor& hidden);

 private:
  // u = input_proj(concat(embed(tokens), feature)); saves into c when given.
  Tensor step_input(const Tensor& tokens, const Tensor& feature, Cache* c);
  Tensor concat_last(const Tensor& a, const Tensor& b) const;

  TransformerLM& target_;
  std::vector<int64_t> layers_;
  std::unique_ptr<TransformerLM> body_;
  Linear fc_, input_proj_;
  std::vector<std::string> shared_;  // the body's params that are not the drafter's own (the target's; unused)
};

}  // namespace anvil
