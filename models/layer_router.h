// Layer-skip routers (ALGORITHMS.md §8): which layers of a frozen backbone get a router and how
// it decides. MindSkip (Router-Tuning) is a BlockGate of a hard kind: per sequence (or token) it
// computes r = sigmoid(w . xbar) from the sub-block's normed input and runs the sub-block only
// where r >= tau (the block gathers the active rows, runs the sub-block on them alone and
// scatters the result back: models/block.cpp). Dr.LLM's router (skip / execute / repeat per
// sequence) is models/drllm_router.h's; the spec here describes both.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/param.h"
#include "models/block.h"

namespace anvil {

enum class RouterKind { MindSkip, DrLLM };
enum class SkipScope { Attention, FeedForward, Block };  // what a MindSkip decision skips
enum class SkipUnit { Sequence, Token };                 // per sequence (decided on the mean) or per token

struct RouterSpec {
  RouterKind kind = RouterKind::MindSkip;
  SkipScope scope = SkipScope::Attention;
  SkipUnit unit = SkipUnit::Sequence;
  std::vector<int64_t> layers;  // global layer indices with a router: sorted, unique, in [0, L - 1)
  float tau = 0.5f;             // MindSkip threshold: run iff sigmoid(w . xbar) >= tau
  int64_t hidden = 128;         // Dr.LLM bottleneck width h
  int64_t windows = 8;          // Dr.LLM W windows of the windowed mean
  // MindSkip training: compute skipped units' sub-blocks too and output x + g f (g = 0 there), so
  // dL/dg = <dy, f> reaches every unit (straight-through, as the released Router-Tuning code does).
  // Without it a unit pushed below tau gets no LM gradient again: "sticky skipping" (ALGORITHMS.md
  // §8). Inference always skips for real. A token-unit attention skips for real in training too (a
  // dense pass would let later tokens see skipped tokens' keys, which decoding never does); its
  // skipped tokens take f from a forward-only dense probe for dL/dg alone (block_routing.cpp).
  bool train_skipped = true;

  bool routes(int64_t layer) const;  // whether `layer` has a router
};

const char* router_kind_name(RouterKind kind);  // "mindskip", "drllm"
const char* skip_scope_name(SkipScope scope);   // "attention", "mlp", "block"
const char* skip_unit_name(SkipUnit unit);      // "sequence", "token"

// The router layers a config's `router.layers: []` defaults to: the last n but the final one,
// L - 1 - n .. L - 2 (ALGORITHMS.md §8), clipped at 0. n >= 1.
std::vector<int64_t> default_router_layers(int64_t num_layers, int64_t n);
// Throws one clear error for a spec that does not fit a model of num_layers layers: no layers,
// layers unsorted / repeated / out of [0, L - 1) (the final layer never gets a router), tau not
// in (0, 1), Dr.LLM hidden or windows < 1.
void check_router_spec(const RouterSpec& spec, int64_t num_layers);

// The MindSkip router of one sub-block (or of a whole block: SkipScope::Block), a hard BlockGate.
// Its weight `<layer prefix>.router.weight` [1, hidden] starts at exactly 0: r = 0.5 >= tau = 0.5
// everywhere, so a fresh router runs every sub-block and the model equals its backbone bit for bit.
//   forward(n, c): n [B, T, hidden] is the gated sub-block's normed input (norm1's output for
//     attention and block scope, norm2's for mlp scope). Returns g, host f32 [B, T] of 0 / 1 (a
//     sequence's decision repeated over its tokens), and adds its gate sum and unit count to the
//     StepContext's router_stats. Math in f32 whatever the compute dtype.
//   backward(dg, c): dg host f32 [B, T] = dL/dg of each token (<dL/dh_out, f> of its row; 0 where
//     skipped, unless the block computed the skipped units too: RouterSpec::train_skipped). Per
//     unit: dL/dg_u = the sum over its tokens + StepContext::router_capacity_grad;
//     straight-through: dL/dz = dL/dg_u * r (1 - r); accumulates dL/dw = sum_u dL/dz_u xbar_u and
//     returns dL/dn [B, T, hidden] on n's device in n's dtype (through xbar: the backbone is frozen
//     but its input gradient still reaches earlier routers).
class MindSkipRouter : public BlockGate {
 public:
  MindSkipRouter(const std::string& layer_prefix, int64_t hidden, SkipUnit unit, float tau, bool whole_block,
                 bool train_skipped = false);
  Tensor forward(const Tensor& n, Cache& c) override;
  Tensor backward(const Tensor& dg, Cache& c) override;
  Tensor infer(const Tensor& n) override;
  void collect_params(std::vector<Param*>& out) override { out.push_back(&weight); }
  size_t activation_bytes(const ActivationDims& d) const override;
  GateSkip skip_unit() const override { return unit_ == SkipUnit::Sequence ? GateSkip::Sequence : GateSkip::Token; }
  bool skips_whole_block() const override { return whole_block_; }
  bool trains_skipped() const override { return train_skipped_; }
  // r = sigmoid(w . xbar) of each unit of n [B, T, hidden] (host f32 [B] or [B * T]).
  Tensor probabilities(const Tensor& n) const;
  float tau() const { return tau_; }
  SkipUnit unit() const { return unit_; }

  Param weight;  // [1, hidden], f32 master math
  // Decisions to take instead of r >= tau (tests; teacher forcing): one 0 / 1 per unit of each
  // following call (sequence unit: per row; token unit: per token of the [B, T] input), r and
  // the gradient as usual. Empty (the default): the router decides.
  std::vector<float> forced;

 private:
  // z = w . xbar per unit (host f32 [units]) from n [B, T, hidden].
  std::vector<float> logits(const Tensor& n) const;
  // g per token, host f32 [B, T], from the units' r (or `forced`).
  Tensor gates(const std::vector<float>& r, int64_t B, int64_t T) const;
  SkipUnit unit_;
  float tau_;
  bool whole_block_;
  bool train_skipped_;
};

// The BlockSpec::gate factory of a MindSkip spec: a router on the gated sub-block (both, as one
// decision, for SkipScope::Block) of each block whose BlockContext::layer is in spec.layers.
BlockGateFactory mindskip_gates(const RouterSpec& spec);

}  // namespace anvil
