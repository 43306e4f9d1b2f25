// Module: the explicit forward/backward contract every layer implements.
//   forward saves what backward needs in the caller's Cache;
//   backward returns dx (assigned) and accumulates (+=) parameter gradients,
//   then clears its cache entries so activation memory falls as backward proceeds.
// Each module also reports the activation bytes its forward saves (memory_table adds them up).
#pragma once
#include <vector>

#include "core/tensor.h"
#include "models/cache.h"
#include "core/param.h"

namespace anvil {

class LinearWeight;

// One micro-batch as a module's memory report sees it, on this rank.
struct ActivationDims {
  size_t tokens = 0;   // the tokens this rank's token-local tensors hold (batch x its longest slice)
  size_t batch = 0;    // sequences in the micro-batch
  size_t seq_len = 0;  // the full sequence length (attention under sp holds all positions of its heads)
  size_t act = 4;      // bytes of an activation element (the compute dtype)
  size_t stat = 4;     // bytes of a saved statistic (norm stats, log-sum-exp: f32)
};

class Module {
 public:
  virtual ~Module() = default;
  virtual Tensor forward(const Tensor& x, Cache& c) = 0;
  virtual Tensor backward(const Tensor& dy, Cache& c) = 0;
  // Inference forward: the same output as forward, saving nothing for backward.
  // The default runs forward on a throwaway Cache; leaf modules and the blocks
  // override it so KV-cached decoding allocates no training cache at all.
  virtual Tensor infer(const Tensor& x) {
    Cache scratch;
    return forward(x, scratch);
  }
  // Bytes forward saves in its Cache for backward, its input included when it keeps it
  // (activations that alias a caller's tensor, like embedding ids, are the caller's). A module
  // that saves nothing keeps the default.
  virtual size_t activation_bytes(const ActivationDims&) const { return 0; }
  // Appends this module's params (and its children's) in a fixed order.
  virtual void collect_params(std::vector<Param*>& out) = 0;
  // Appends the LinearWeights this module (and its children) own, in the same order: what a LoRA
  // adapter or a quantized base attaches to. A tied weight is its owner's, not listed.
  virtual void collect_linears(std::vector<LinearWeight*>& out) {}

  std::vector<Param*> params() {
    std::vector<Param*> out;
    collect_params(out);
    return out;
  }
};

}  // namespace anvil
