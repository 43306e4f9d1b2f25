// Cache: what a module's forward saves for its backward, one per micro-batch and
// owned by the caller, so a pipeline can keep several micro-batches in flight and
// a recompute wrapper can drop and rebuild it. Children mirror the module tree.
#pragma once
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

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

 private:
  void collect_storages(std::vector<const Storage*>& out) const;
  std::vector<std::pair<std::string, Tensor>> slots_;
  std::deque<Cache> children_;  // deque: references to children stay valid as it grows
};

}  // namespace anvil
