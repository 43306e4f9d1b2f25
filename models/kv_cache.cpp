#include "models/kv_cache.h"

#include <algorithm>

namespace anvil {

void KVRoute::reset_row(size_t row) {
  run[row] = -1;
  slots[row].clear();
}

void KVRoute::truncate_row(size_t row, int64_t length) {
  if (length == 0) return reset_row(row);  // a new sequence: decide again at its prefill
  auto& s = slots[row];
  while (!s.empty() && s.back() >= length) s.pop_back();
}

bool KVRows::uniform() const {
  return std::all_of(lengths.begin(), lengths.end(), [&](int64_t l) { return l == lengths.front(); });
}

KVCache::KVCache(const ModelConfig& config, int64_t batch, int64_t max_len, Device device, DType dtype)
    : batch_(batch),
      max_len_(max_len),
      num_kv_heads_(config.num_key_value_heads),
      head_dim_(config.resolved_head_dim()),
      rows_(std::make_shared<KVRows>()) {
  ANVIL_CHECK(batch >= 1, "KVCache: batch must be >= 1, got ", batch);
  ANVIL_CHECK(max_len >= 1, "KVCache: max_len must be >= 1, got ", max_len);
  ANVIL_CHECK(max_len <= config.max_position_embeddings, "KVCache: max_len = ", max_len,
              " exceeds the model's max_position_embeddings = ", config.max_position_embeddings,
              " — the model has no positions beyond that; use max_len <= ", config.max_position_embeddings);
  rows_->lengths.assign(static_cast<size_t>(batch), 0);
  const Shape shape{batch, max_len, num_kv_heads_, head_dim_};
  layers_.reserve(static_cast<size_t>(config.num_hidden_layers));
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    auto route = std::make_shared<KVRoute>();
    route->run.assign(static_cast<size_t>(batch), -1);
    route->slots.resize(static_cast<size_t>(batch));
    layers_.push_back({Tensor::empty(shape, dtype, device), Tensor::empty(shape, dtype, device), rows_, route});
  }
}

int64_t KVCache::length() const {
  ANVIL_CHECK(uniform(), "KVCache: the rows hold different lengths (row 0: ", rows_->lengths[0], ", row ",
              std::max_element(rows_->lengths.begin(), rows_->lengths.end()) - rows_->lengths.begin(), ": ",
              *std::max_element(rows_->lengths.begin(), rows_->lengths.end()),
              ") — there is no common length; read row_length(row)");
  return rows_->lengths[0];
}

int64_t KVCache::row_length(int64_t row) const {
  ANVIL_CHECK(row >= 0 && row < batch_, "KVCache: row ", row, " out of range [0, ", batch_, ")");
  return rows_->lengths[static_cast<size_t>(row)];
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
  for (int64_t b = 0; b < batch_; ++b) {
    const int64_t len = row_length(b);
    ANVIL_CHECK(n >= 0 && len + n <= max_len_, "KVCache: ", n, " new positions after the ", len,
                " cached ones of row ", b, " need ", len + n, " but the cache holds max_len = ", max_len_,
                " — build the KVCache with max_len >= ", len + n, " (or reset() it)");
  }
}

void KVCache::advance(int64_t n) {
  check_room(n);
  for (int64_t& l : rows_->lengths) l += n;
  rows_->positions = Tensor();
  rows_->step_positions = Tensor();
  next_positions_ = Tensor();
  rows_->tree = Tensor();
  next_tree_.clear();
}

void KVCache::reset() {
  std::fill(rows_->lengths.begin(), rows_->lengths.end(), 0);
  for (KVLayer& l : layers_)
    for (size_t b = 0; b < l.route->run.size(); ++b) l.route->reset_row(b);
  rows_->positions = Tensor();
  next_positions_ = Tensor();
  rows_->tree = Tensor();
  next_tree_.clear();
}

void KVCache::truncate(int64_t length) {
  for (int64_t b = 0; b < batch_; ++b)
    ANVIL_CHECK(length >= 0 && length <= row_length(b), "KVCache: truncate(", length, ") outside [0, ",
                row_length(b), "] for row ", b);
  std::fill(rows_->lengths.begin(), rows_->lengths.end(), length);
  for (KVLayer& l : layers_)
    for (size_t b = 0; b < l.route->run.size(); ++b) l.route->truncate_row(b, length);
}

void KVCache::truncate(int64_t row, int64_t length) {
  const int64_t len = row_length(row);
  ANVIL_CHECK(length >= 0 && length <= len, "KVCache: truncate(row ", row, ", ", length, ") outside [0, ", len, "]");
  rows_->lengths[static_cast<size_t>(row)] = length;
  for (KVLayer& l : layers_) l.route->truncate_row(static_cast<size_t>(row), length);
}

void KVCache::keep(int64_t row, int64_t prefix, const std::vector<int64_t>& slots) {
  const int64_t len = row_length(row);
  ANVIL_CHECK(prefix >= 0 && prefix <= len, "KVCache: keep(row ", row, "): prefix ", prefix, " outside [0, ", len, "]");
  for (size_t i = 0; i < slots.size(); ++i) {
    ANVIL_CHECK(slots[i] >= prefix && slots[i] < len, "KVCache: keep(row ", row, "): slot ", slots[i], " (index ", i,
                ") outside [prefix = ", prefix, ", row length = ", len, ")");
    ANVIL_CHECK(i == 0 || slots[i] > slots[i - 1], "KVCache: keep(row ", row, "): slots must be strictly increasing, got ",
                slots[i - 1], " then ", slots[i], " — list the accepted path root first");
  }
  for (const KVLayer& l : layers_)
    ANVIL_CHECK(l.route->slots[static_cast<size_t>(row)].empty(), "KVCache: keep(row ", row, "): a token-unit "
                "layer-skip router holds this row's keys compacted — tree verification is not supported with "
                "token-unit routers; decode with a chain (or route per sequence)");
  // Destination prefix + i <= slots[i] and increasing: a copy never overwrites a slot still to be read.
  for (KVLayer& l : layers_)
    for (size_t i = 0; i < slots.size(); ++i) {
      const int64_t dst = prefix + static_cast<int64_t>(i), src = slots[i];
      if (dst == src) continue;
      for (Tensor* t : {&l.k, &l.v}) {
        Tensor row_t = t->select(0, row);
        Tensor to = row_t.select(0, dst);
        to.copy_(row_t.select(0, src));
      }
    }
  rows_->lengths[static_cast<size_t>(row)] = prefix + static_cast<int64_t>(slots.size());
}

void KVCache::set_positions(Tensor positions) { next_positions_ = std::move(positions); }

void KVCache::set_tree(std::vector<uint8_t> visible) { next_tree_ = std::move(visible); }

Tensor KVCache::begin_step(int64_t T, int64_t max_positions, Device device) {
  check_room(T);
  Tensor host = Tensor::empty({batch_, T}, DType::I32);
  int32_t* p = host.data<int32_t>();
  if (next_positions_.defined()) {
    ANVIL_CHECK(next_positions_.dtype() == DType::I32 && next_positions_.shape() == Shape({batch_, T}),
                "KVCache::set_positions: position ids must be i32 [batch, T_new] = ", shape_str({batch_, T}),
                " for this call, got ", next_positions_.describe());
    const Tensor given = next_positions_.to(Device::cpu()).contiguous();
    std::copy(given.data<int32_t>(), given.data<int32_t>() + batch_ * T, p);
  } else {
    for (int64_t b = 0; b < batch_; ++b)
      for (int64_t t = 0; t < T; ++t) p[b * T + t] = static_cast<int32_t>(row_length(b) + t);
  }
  for (int64_t i = 0; i < batch_ * T; ++i)
    ANVIL_CHECK(p[i] >= 0 && p[i] < max_positions, "forward_cached: position ", p[i], " of row ", i / T, " token ",
                i % T, " is outside [0, ", max_positions, ") — max_position_embeddings = ", max_positions,
                "; shorten the prompt or the generation");
  rows_->step_positions = host;
  const bool common_run = !next_positions_.defined() && uniform();
  rows_->positions = common_run ? Tensor() : host.to(device);
  rows_->tree = Tensor();
  if (!next_tree_.empty()) {
    ANVIL_CHECK(static_cast<int64_t>(next_tree_.size()) == T * T, "KVCache::set_tree: the mask has ", next_tree_.size(),
                " entries but this call decodes ", T, " tokens — give T * T = ", T * T, " (DraftTree::ancestor_mask)");
    ANVIL_CHECK(next_positions_.defined(), "KVCache::set_tree: a tree call needs its position ids too — call "
                "set_positions with prefix length + depth of each node");
    Tensor tree = Tensor::empty({T, T}, DType::I32);
    std::copy(next_tree_.begin(), next_tree_.end(), tree.data<int32_t>());
    rows_->tree = tree.to(device);
  }
  return host;
}

}  // namespace anvil
