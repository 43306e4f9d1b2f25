// KVCache: the keys and values of every layer for incremental (KV-cached)
// decoding. Each layer holds K and V buffers [B, max_len, Hkv, D] allocated once,
// when the cache is built; decoding writes new positions in place and never
// reallocates. All layers share one length: the positions 0 .. length() - 1 that
// have been processed. Keys are stored after RoPE (Llama), so a cached key never
// has to be rotated again. A sliding-window model (mistral) keeps every position as
// well (truncate() may roll back into the window); attention reads only the last
// sliding_window keys, skipping the older blocks.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "models/config.h"

namespace anvil {

struct KVLayer {
  Tensor k;  // [B, max_len, Hkv, D] in the model's compute dtype, on its device
  Tensor v;  // [B, max_len, Hkv, D]
};

class KVCache {
 public:
  // Buffers for `config`'s layers and KV heads, for `batch` sequences of up to
  // `max_len` positions. max_len must lie in [1, max_position_embeddings]. `device` and `dtype`
  // are the model's (TransformerLM::device(), compute_dtype()).
  KVCache(const ModelConfig& config, int64_t batch, int64_t max_len, Device device = Device::cpu(),
          DType dtype = DType::F32);

  int64_t batch() const { return batch_; }
  int64_t max_len() const { return max_len_; }
  int64_t length() const { return length_; }  // positions already processed
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  int64_t num_kv_heads() const { return num_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  KVLayer& layer(int64_t i);
  size_t bytes() const;  // the K and V buffers of every layer

  // Throws unless `n` more positions fit (naming the current length, n and max_len).
  void check_room(int64_t n) const;
  // Marks `n` more positions as filled (the model calls this after every layer wrote them).
  void advance(int64_t n);
  // Forgets every position (the buffers stay allocated, their contents become stale).
  void reset() { length_ = 0; }
  // Drops positions >= length (e.g. rejected speculative tokens); length <= length().
  void truncate(int64_t length);

 private:
  int64_t batch_, max_len_, num_kv_heads_, head_dim_;
  int64_t length_ = 0;
  std::vector<KVLayer> layers_;
};

}  // namespace anvil
