#include "models/kv_cache.h"

namespace anvil {

KVCache::KVCache(const ModelConfig& config, int64_t batch, int64_t max_len, Device device, DType dtype)
    : batch_(batch),
      max_len_(max_len),
      num_kv_heads_(config.num_key_value_heads),
      head_dim_(config.resolved_head_dim()) {
  ANVIL_CHECK(batch >= 1, "KVCache: batch must be >= 1, got ", batch);
  ANVIL_CHECK(max_len >= 1, "KVCache: max_len must be >= 1, got ", max_len);
  ANVIL_CHECK(max_len <= config.max_position_embeddings, "KVCache: max_len = ", max_len,
              " exceeds the model's max_position_embeddings = ", config.max_position_embeddings,
              " — the model has no positions beyond that; use max_len <= ", config.max_position_embeddings);
  const Shape shape{batch, max_len, num_kv_heads_, head_dim_};
  layers_.reserve(static_cast<size_t>(config.num_hidden_layers));
  for (int64_t i = 0; i < config.num_hidden_layers; ++i)
    layers_.push_back({Tensor::empty(shape, dtype, device), Tensor::empty(shape, dtype, device)});
}

KVLayer& KVCache::layer(int64_t i) {
  ANVIL_CHECK(i >= 0 && i < num_layers(), "KVCache: layer ", i, " out of range [0, ", num_layers(), ")");
  return layers_[static_cast<size_t>(i)];
}

size_t KVCache::bytes() const {
  size_t total = 0;
  for (const KVLayer& l : layers_) total += l.k.nbytes() + l.v.nbytes();
  return total;
}

void KVCache::check_room(int64_t n) const {
  ANVIL_CHECK(n >= 0 && length_ + n <= max_len_, "KVCache: ", n, " new positions after the ", length_,
              " cached ones need ", length_ + n, " but the cache holds max_len = ", max_len_,
              " — build the KVCache with max_len >= ", length_ + n, " (or reset() it)");
}

void KVCache::advance(int64_t n) {
  check_room(n);
  length_ += n;
}

void KVCache::truncate(int64_t length) {
  ANVIL_CHECK(length >= 0 && length <= length_, "KVCache: truncate(", length, ") outside [0, ", length_, "]");
  length_ = length;
}

}  // namespace anvil
