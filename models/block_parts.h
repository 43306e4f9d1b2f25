// The interfaces of a transformer block's pluggable slots beyond norm and attention:
// the feed-forward sub-block (the dense MLP today; an MoE layer next) and the optional gate
// around a sub-block (a layer-skip router, in a later issue). A new kind of either is a new
// class plus a BlockSpec factory (models/block.h), not an edit of the block or the families.
#pragma once
#include "models/module.h"

namespace anvil {

// x [..., hidden] -> [..., hidden], token by token as far as the block is concerned.
// Every feed-forward reports what its forward saves (pure: a new part cannot forget it).
class FeedForward : public Module {
 public:
  size_t activation_bytes(const ActivationDims& d) const override = 0;
};

// A gate around one sub-block f (attention or feed-forward) of a block. From the sub-block's
// residual input x [B, T, hidden] it computes a per-token weight w [B, T] (f32), and the
// block's residual becomes x + w * f(x) row by row: w = 1 keeps the sub-block for that
// token, w = 0 skips it, a value in between scales it (a soft router). forward(x, c) returns
// w; backward(dw, c) takes dL/dw [B, T] (f32), accumulates the gate's own gradients and
// returns its contribution to dL/dx (an undefined tensor when w does not depend on x).
//
// A hard gate (skip_unit() != None, a layer-skip router: models/layer_router.h) decides instead
// per sequence or per token whether the sub-block runs at all: forward reads the sub-block's
// normed input, returns host f32 0 / 1 weights [B, T], and the block runs the sub-block on the
// active rows only (skipped rows get y = x; their f is never computed). backward gets dL/dg of
// each token and returns dL/d(normed input). skips_whole_block(): the gate sits on the
// attention slot and its decision covers both sub-blocks (one router per block).
// trains_skipped(): in a training forward (StepContext::router_training) the block computes f on
// every row and outputs x + g f, so skipped rows get dL/dg = <dy, f> too (straight-through).
enum class GateSkip { None, Sequence, Token };
class BlockGate : public Module {
 public:
  size_t activation_bytes(const ActivationDims& d) const override = 0;
  virtual GateSkip skip_unit() const { return GateSkip::None; }
  virtual bool skips_whole_block() const { return false; }
  virtual bool trains_skipped() const { return false; }
};

}  // namespace anvil
