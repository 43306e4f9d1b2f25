// Cache: what a module's forward saves for its backward, one per micro-batch and
// owned by the caller, so a pipeline can keep several micro-batches in flight and
// a recompute wrapper can drop and rebuild it. Children mirror the module tree.
// The micro-batch's StepContext (positions, mask, aux losses) hangs off the root and
// every child returns it.
#pragma once
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "models/step_context.h"

namespace anvil {

class Cache {
 public:
  // The slot for `key`, created empty on first use.
  Tensor& operator[](const std::string& key);
  // A saved tensor; throws when forward did not save it (backward without forward).
  const Tensor& get(const std::string& key) const;
  bool has(const std::string& key) const;
  // The cache of child module i, created on first use.
  Cache& child(size_t index);
  // Drops everything saved here and in the children (backward calls this when done).
  void clear();
  // Drops what is saved here but keeps the children's (a composite's own activations).
  void clear_own();
  // Bytes held by distinct storages saved here and below.
  size_t bytes() const;

  // Sets the micro-batch's context here and in every child, existing or created later
  // (call it on the root before forward; clear() keeps it). Null removes it.
  void set_context(std::shared_ptr<StepContext> context);
  // The context set on the root, or an empty one (contiguous positions, causal mask, no
  // aux losses) when none was set, so callers that set nothing behave as before.
  const StepContext& context() const;
  // The context for modules that add to it (aux losses); null when none was set.
  StepContext* mutable_context() const { return context_.get(); }

 private:
  void collect_storages(std::vector<const Storage*>& out) const;
  std::vector<std::pair<std::string, Tensor>> slots_;
  std::deque<Cache> children_;  // deque: references to children stay valid as it grows
  std::shared_ptr<StepContext> context_;  // shared with every child
};

}  // namespace anvil
