// Optimizer: updates a model's trainable params from their gradients. State is
// exposed by name so checkpoints can store it at full logical shape.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/param.h"

namespace anvil {

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual const char* name() const = 0;
  // One update with this step's learning rate (from the schedule).
  virtual void step(double lr) = 0;
  // Every state tensor by a stable name ("<param>.exp_avg", ...) at its param's full
  // logical shape; checkpoints read these to save and write into them to restore.
  // Unsharded optimizers return views of the live state; sharded ones (ZeRO) gather
  // it into new tensors, a collective every rank must call.
  virtual std::vector<NamedTensor> state() = 0;
  // After writing a checkpoint into state()'s tensors: sharded optimizers copy their
  // shard out of them; unsharded ones were written in place and need nothing.
  virtual void load_state(const std::vector<NamedTensor>& full) {}
  // Updates taken so far (restored from checkpoints with set_step_count).
  virtual int64_t step_count() const = 0;
  virtual void set_step_count(int64_t steps) = 0;

  // Bytes of optimizer state this process holds (its shard under ZeRO).
  virtual size_t state_bytes();
};

// Sum of squares of every gradient, then sqrt (the global norm before clipping).
double global_grad_norm(const std::vector<Param*>& params);
// Scales all gradients so their global norm is at most max_norm; returns the
// norm before clipping. max_norm <= 0 only measures.
double clip_grad_norm(const std::vector<Param*>& params, double max_norm);

}  // namespace anvil
