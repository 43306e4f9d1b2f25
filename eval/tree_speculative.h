// Tree speculative decoding: a drafter proposes a tree of candidates per row (DraftTree, width ×
// depth), the target scores all of its nodes in ONE forward under the tree mask (KVCache::set_tree:
// each node sees the row's committed prefix and its ancestors, at position prefix length + depth),
// verify_tree (eval/speculative_tree.h) keeps one path, and both KV caches are compacted to that
// path per row (KVCache::keep). Lossless at any temperature with top-k / top-p; greedy output
// equals generate()'s. Uniforms: eval/speculative_tree.h.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "eval/drafter.h"
#include "eval/speculative.h"
#include "eval/speculative_tree.h"

namespace anvil {

// What TreeDrafter::propose returns for the batch: every row's tree tokens and, per node, the q
// its children were drawn from. Rows that are not active carry placeholders.
struct TreeBlock {
  int64_t size = 0;             // tree nodes with the root
  int64_t vocab = 0;
  std::vector<int32_t> tokens;  // [B, size]: node 0 = the row's last committed token
  std::vector<double> q;        // [B, size, vocab] (leaves' rows unused, zero)
  int64_t forwards = 0;         // batched drafter forwards for this block
};

// A drafter proposing trees; the round protocol of Drafter (eval/drafter.h), with the verdict a
// path of tree nodes.
class TreeDrafter {
 public:
  virtual ~TreeDrafter() = default;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t max_positions() const = 0;
  // Starts a batch (setup.gamma is the tree's depth; setup.max_len its room).
  virtual void begin(const DraftSetup& setup, const DraftTree& tree) = 0;
  virtual TreeBlock propose(uint32_t round, const std::vector<bool>& active) = 0;
  // Active row b kept the nodes paths[b] (root excluded, one per level) and then committed next[b].
  virtual void commit(const std::vector<bool>& active, const std::vector<std::vector<int32_t>>& paths,
                      const std::vector<int32_t>& next) = 0;
};

// A standalone TransformerLM drafting a tree level by level with its own KV cache: the call for
// level d feeds the root and every node above level d under the tree mask (re-running the upper
// levels: simple and exact; the tree is small), and draws the children of the level-d nodes:
// child c of a node from that node's q with speculative_uniform(seed, kDraftStream + s, r, c − 1)
// (i.i.d., with replacement: what verify_tree's exactness needs). Greedy takes the `width` best
// tokens of the node's logits, in order (distinct, the first the argmax): at T = 0 any candidates
// are exact and distinct ones cover more. After the verdict the cache keeps the accepted path
// (keep); a path reaching a leaf leaves the leaf unfed, and the next round first feeds it.
class LMTreeDrafter : public TreeDrafter {
 public:
  // Refuses a model with a sliding window (the tree mask has none) or ParallelSpec mask tokens.
  explicit LMTreeDrafter(TransformerLM& model);
  int64_t vocab_size() const override { return model_.config().vocab_size; }
  int64_t max_positions() const override { return model_.config().max_position_embeddings; }
  void begin(const DraftSetup& setup, const DraftTree& tree) override;
  TreeBlock propose(uint32_t round, const std::vector<bool>& active) override;
  void commit(const std::vector<bool>& active, const std::vector<std::vector<int32_t>>& paths,
              const std::vector<int32_t>& next) override;

 private:
  // Feeds the one committed token a row whose whole path was accepted still lacks (all rows step
  // together; a row that lacks nothing re-feeds its last fed token). Returns the forwards run (0 or 1).
  int64_t catch_up(const std::vector<bool>& active);
  TransformerLM& model_;
  std::unique_ptr<KVCache> kv_;
  DraftRows rows_;  // committed tokens, and fed: how many of them the cache holds
  DraftTree tree_;
  std::vector<int32_t> drafted_;  // the last block's tokens [B, size]
};

// Generates up to max_new_tokens tokens after each prompt with `drafter` proposing a width × depth
// tree per target forward; generate()'s contract, as speculative_generate. stats.gamma is the
// depth and its acceptance by position is by tree level. Checked before any work, one error each:
// the tree's shape (DraftTree::complete), the drafter's vocabulary, the sampling config, and that
// every prompt's length + max_new_tokens + tree nodes − 1 fits both models' positions (the cache
// holds the committed tokens and one whole tree).
// The checks above on their own (a caller may run them before other work, e.g. a warm-up).
void check_tree_decoding(const TransformerLM& target, int64_t drafter_vocab, int64_t drafter_positions,
                         const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                         const SamplingConfig& config, int width, int depth,
                         std::optional<int32_t> stop_token = std::nullopt);

SpeculativeResult tree_speculative_generate(TransformerLM& target, TreeDrafter& drafter,
                                            const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                                            const SamplingConfig& config, int width, int depth,
                                            std::optional<int32_t> stop_token = std::nullopt);

}  // namespace anvil
