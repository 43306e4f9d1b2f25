#include "models/cache.h"

#include <algorithm>

namespace anvil {

Tensor& Cache::operator[](const std::string& key) {
  for (auto& [k, t] : slots_)
    if (k == key) return t;
  slots_.emplace_back(key, Tensor());
  return slots_.back().second;
}

const Tensor& Cache::get(const std::string& key) const {
  for (const auto& [k, t] : slots_)
    if (k == key && t.defined()) return t;
  ANVIL_FAIL("cache has no saved tensor '", key,
             "' — backward was called without a matching forward on this cache (or after it was cleared)");
}

bool Cache::has(const std::string& key) const {
  for (const auto& [k, t] : slots_)
    if (k == key && t.defined()) return true;
  return false;
}

Cache& Cache::child(size_t index) {
  while (children_.size() <= index) {
    children_.emplace_back();
    children_.back().context_ = context_;
  }
  return children_[index];
}

void Cache::set_context(std::shared_ptr<StepContext> context) {
  context_ = context;
  for (auto& c : children_) c.set_context(context);
}

const StepContext& Cache::context() const {
  static const StepContext kEmpty;
  return context_ ? *context_ : kEmpty;
}

void Cache::clear_own() { slots_.clear(); }

void Cache::clear() {
  slots_.clear();
  for (auto& c : children_) c.clear();
}

void Cache::collect_storages(std::vector<const Storage*>& out) const {
  for (const auto& [k, t] : slots_)
    if (t.defined()) out.push_back(t.storage().get());
  for (const auto& c : children_) c.collect_storages(out);
}

size_t Cache::bytes() const {
  std::vector<const Storage*> storages;
  collect_storages(storages);
  std::sort(storages.begin(), storages.end());
  storages.erase(std::unique(storages.begin(), storages.end()), storages.end());
  size_t total = 0;
  for (const Storage* s : storages) total += s->bytes();
  return total;
}

}  // namespace anvil
