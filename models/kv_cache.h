// KVCache: the keys and values of every layer for incremental (KV-cached)
// decoding. Each layer holds K and V buffers [B, max_len, Hkv, D] allocated once,
// when the cache is built; decoding writes new positions in place and never
// reallocates. Keys are stored after RoPE (Llama), so a cached key never has to be
// rotated again. A sliding-window model (mistral) keeps every position as well
// (truncate() may roll back into the window); attention reads only the last
// sliding_window keys, skipping the older blocks.
//
// Rows and slots. Row b has filled slots 0 .. row_length(b) - 1 (all layers alike); rows may
// differ in length (speculative decoding accepts a different number of draft tokens per
// sequence). A decoding call writes row b's T new tokens at slots row_length(b) .. + T - 1,
// and each query attends causally over its row's slots. A token's *position* (RoPE angle,
// GPT-2's wpe row) is its slot unless set_positions() gives explicit position ids for the
// call, e.g. the depth-based positions of a tree of draft candidates sharing a prefix, whose
// siblings set_tree() keeps from seeing each other. After verification keep() compacts the
// accepted path so that slot == position again.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "models/config.h"

namespace anvil {

// What the layers of one KVCache share: each row's filled length and the positions of the
// tokens the call in flight decodes.
struct KVRows {
  std::vector<int64_t> lengths;  // filled slots per row
  // i32 [B, T] on the model's device: the positions of the call in flight, set by
  // KVCache::begin_step when they are not one common run start .. start + T - 1; else undefined.
  Tensor positions;
  // i32 [T, T] on the model's device: the tree mask of the call in flight (KVCache::set_tree), token
  // i of the call seeing token j of the call iff tree[i, j] != 0; undefined: causal.
  Tensor tree;
  // host i32 [B, T]: the positions of the call in flight, always set by KVCache::begin_step
  // (layer-skip routers of token unit place their tokens by it).
  Tensor step_positions;
  bool uniform() const;  // every row has the same length
};

// What a layer-skip router (models/layer_router.h) remembers of a KVCache's layer; reset with
// the cache. Sequence unit: each row's decision, taken at its first call (the prefill) and kept.
// Token unit: the layer holds keys only of the tokens it ran on, compacted — entry i of row b is
// the token at row slot slots[b][i]; a skipped token is absent, later tokens never see it.
struct KVRoute {
  std::vector<int8_t> run;                   // per row: -1 undecided, 0 skips, 1 runs (sequence unit)
  std::vector<std::vector<int32_t>> slots;   // per row: the row slots held, in order (token unit)
  void reset_row(size_t row);
  void truncate_row(size_t row, int64_t length);  // forgets the tokens at slots >= length
};

struct KVLayer {
  Tensor k;  // [B, max_len, Hkv, D] in the model's compute dtype, on its device
  Tensor v;  // [B, max_len, Hkv, D]
  // The owning cache's rows (null for a layer built by hand: then start_pos places the tokens).
  std::shared_ptr<const KVRows> rows;
  // Routing state of a router layer (a KVCache's layers have one, sized to its batch; null for a
  // layer built by hand: decisions are then made per call).
  std::shared_ptr<KVRoute> route;
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
  // The filled length shared by every row; throws when the rows differ (use row_length).
  int64_t length() const;
  int64_t row_length(int64_t row) const;
  bool uniform() const { return rows_->uniform(); }  // every row has the same length
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  int64_t num_kv_heads() const { return num_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  KVLayer& layer(int64_t i);
  size_t bytes() const;  // the K and V buffers of every layer

  // Throws unless `n` more slots fit in every row (naming the row, its length, n and max_len).
  void check_room(int64_t n) const;
  // Marks `n` more slots of every row as filled (the model calls this after every layer wrote
  // them) and forgets the positions of the finished call.
  void advance(int64_t n);
  // Forgets every position (the buffers stay allocated, their contents become stale).
  void reset();
  // Every row keeps slots 0 .. length - 1 (e.g. drops rejected speculative tokens);
  // length <= row_length(b) for every row.
  void truncate(int64_t length);
  // Row `row` keeps slots 0 .. length - 1; length <= row_length(row).
  void truncate(int64_t row, int64_t length);
  // Compacts an accepted path of a draft tree in row `row`: slots 0 .. prefix - 1 stay, then
  // slot slots[i] moves to slot prefix + i (keys and values of every layer), in order; the row's
  // length becomes prefix + slots.size(). slots must be strictly increasing, in
  // [prefix, row_length(row)); prefix <= row_length(row). Keys keep the rotation of the
  // position they were decoded at, so give the tree's tokens position ids prefix + depth
  // (set_positions) for the kept path to sit at slot == position.
  void keep(int64_t row, int64_t prefix, const std::vector<int64_t>& slots);

  // Explicit position ids (i32 [B, T], any device) for the next decoding call of T tokens;
  // undefined restores the default (each token's slot). advance() clears them.
  void set_positions(Tensor positions);
  // A tree mask for the next decoding call of T tokens, the same for every row: `visible` [T * T],
  // 1 where token i of the call may see token j of the call (the draft tree's ancestor-or-self
  // mask, DraftTree::ancestor_mask); every token still sees all the cached slots of its row. The
  // call needs position ids too (set_positions: prefix length + depth). advance() clears it;
  // empty clears it now.
  void set_tree(std::vector<uint8_t> visible);
  // The model calls this before a decoding call of T tokens: checks room and positions and
  // publishes to the layers (KVRows::positions) the call's positions on `device` when they are
  // not one common run. Returns the host i32 [B, T] positions (the common run included).
  Tensor begin_step(int64_t T, int64_t max_positions, Device device);
  // Whether the call begun is one common run of positions (every row at the same slot, no
  // explicit ids): the layers then take today's single batched path.
  bool step_is_common_run() const { return !rows_->positions.defined(); }

 private:
  int64_t batch_, max_len_, num_kv_heads_, head_dim_;
  std::shared_ptr<KVRows> rows_;
  Tensor next_positions_;  // set_positions' ids, or undefined
  std::vector<uint8_t> next_tree_;  // set_tree's mask, or empty
  std::vector<KVLayer> layers_;
};

}  // namespace anvil
