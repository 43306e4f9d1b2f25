// Module: the explicit forward/backward contract every layer implements.
//   forward saves what backward needs in the caller's Cache;
//   backward returns dx (assigned) and accumulates (+=) parameter gradients,
//   then clears its cache entries so activation memory falls as backward proceeds.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "models/cache.h"
#include "core/param.h"

namespace anvil {

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
  // Appends this module's params (and its children's) in a fixed order.
  virtual void collect_params(std::vector<Param*>& out) = 0;

  std::vector<Param*> params() {
    std::vector<Param*> out;
    collect_params(out);
    return out;
  }
};

}  // namespace anvil
