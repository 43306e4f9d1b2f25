// Tree attention in one cached forward (KVCache::set_tree + set_positions): every node's logits
// equal the plain model run on its row's prefix and the node's ancestor path (a fresh full
// forward), for GPT-2 (learned positions) and Llama (RoPE, GQA), two layers, two rows whose
// prefixes differ in length. After keep() compacts each row's accepted path (different per row),
// decoding goes on as if only that path had been fed. Without the tree mask the siblings see each
// other and the same comparison fails (shown), so the check can fail.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "eval/speculative_tree.h"
#include "kernels/tree_attention.h"
#include "models/kv_cache.h"
#include "models/transformer.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

std::unique_ptr<TransformerLM> make_model(const ModelConfig& c) {
  auto m = std::make_unique<TransformerLM>(c);
  m->init_weights(7);
  randomize_params(m->params());
  return m;
}

std::vector<int32_t> tokens(int64_t n, int32_t vocab, uint32_t stream) {
  const Tensor t = random_ids({n}, vocab, stream);
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + n);
}

// The last position's logits of a fresh full forward over seq: [V].
Tensor last_logits(TransformerLM& model, const std::vector<int32_t>& seq) {
  Cache c;
  const int64_t T = static_cast<int64_t>(seq.size());
  return model.forward(Tensor::from_vector(seq, {1, T}), c).slice(1, T - 1, T).contiguous();
}

// f32 cached decoding vs a full forward in f32: the same products in other orders.
constexpr double kTol = 1e-5;

// The path of node i from the root (root first).
std::vector<int32_t> path_to(const DraftTree& t, int32_t i) {
  std::vector<int32_t> p;
  for (int32_t j = i; j >= 0; j = t.parent[j]) p.insert(p.begin(), j);
  return p;
}

void check_tree_forward(const ModelConfig& config, const std::string& name, bool masked) {
  auto model = make_model(config);
  const int32_t V = static_cast<int32_t>(config.vocab_size);
  const DraftTree tree = DraftTree::complete(2, 2);  // root + 6 nodes
  const int64_t S = tree.size(), B = 2;
  // Row 0 holds 9 prefix tokens in its cache, row 1 holds 5; the root is the next committed token.
  const std::vector<std::vector<int32_t>> prefix = {tokens(9, V, 1), tokens(5, V, 2)};
  const std::vector<std::vector<int32_t>> nodes = {tokens(S, V, 3), tokens(S, V, 4)};
  KVCache kv(config, B, 24);
  // One call fills 9 slots per row; row 1 then keeps its 5 (the 4 tokens after them are dropped).
  std::vector<int32_t> fill = prefix[0];
  fill.insert(fill.end(), prefix[1].begin(), prefix[1].end());
  const std::vector<int32_t> pad = tokens(4, V, 6);
  fill.insert(fill.end(), pad.begin(), pad.end());
  model->forward_cached(Tensor::from_vector(fill, {2, 9}), kv);
  kv.truncate(1, 5);
  Tensor ids = Tensor::empty({B, S}, DType::I32), pos = Tensor::empty({B, S}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < S; ++i) {
      ids.data<int32_t>()[b * S + i] = nodes[b][i];
      pos.data<int32_t>()[b * S + i] = static_cast<int32_t>(kv.row_length(b) + tree.level[i]);
    }
  kv.set_positions(pos);
  if (masked) kv.set_tree(tree.ancestor_mask());
  const Tensor logits = model->forward_cached(ids, kv);  // [B, S, V]
  double worst = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int32_t i = 0; i < S; ++i) {
      std::vector<int32_t> seq = prefix[b];
      for (int32_t j : path_to(tree, i)) seq.push_back(nodes[b][j]);
      const double d = max_rel_diff(logits.slice(0, b, b + 1).slice(1, i, i + 1).contiguous(), last_logits(*model, seq));
      worst = std::max(worst, d);
      if (masked) EXPECT_LE(d, kTol) << name << " row " << b << " node " << i;
    }
  if (!masked) {
    EXPECT_GT(worst, 100 * kTol) << "without the tree mask the siblings should see each other";
    return;
  }
  // Compact: row 0 accepted nodes 2 then 6 (path root, 2, 6), row 1 only node 1.
  const std::vector<std::vector<int32_t>> accepted = {{0, 2, 6}, {0, 1}};
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = static_cast<int64_t>(prefix[b].size());
    std::vector<int64_t> slots;
    for (int32_t j : accepted[b]) slots.push_back(L + j);
    kv.keep(b, L, slots);
  }
  const std::vector<int32_t> next = tokens(2, V, 5);
  const Tensor got = model->forward_cached(Tensor::from_vector(next, {2, 1}), kv);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int32_t> seq = prefix[b];
    for (int32_t j : accepted[b]) seq.push_back(nodes[b][j]);
    seq.push_back(next[b]);
    EXPECT_LE(max_rel_diff(got.slice(0, b, b + 1).contiguous(), last_logits(*model, seq)), kTol)
        << name << " after keep, row " << b;
  }
}

TEST(TreeAttention, NodesSeePrefixAndAncestorsLlama) { check_tree_forward(small_llama(false), "llama", true); }
TEST(TreeAttention, NodesSeePrefixAndAncestorsGpt2) { check_tree_forward(small_gpt2(), "gpt2", true); }
TEST(TreeAttention, WithoutTheMaskSiblingsInterfere) { check_tree_forward(small_llama(false), "llama", false); }

TEST(TreeAttention, BadInputIsRefused) {
  const ModelConfig config = small_llama(false);
  auto model = make_model(config);
  KVCache kv(config, 1, 20);
  kv.set_tree(DraftTree::complete(2, 1).ancestor_mask());  // 3 x 3
  const std::string no_positions = error_of([&] { model->forward_cached(Tensor::from_vector(std::vector<int32_t>{1, 2, 3}, {1, 3}), kv); });
  EXPECT_NE(no_positions.find("needs its position ids"), std::string::npos) << no_positions;
  kv.reset();
  kv.set_tree(DraftTree::complete(2, 1).ancestor_mask());
  kv.set_positions(Tensor::from_vector(std::vector<int32_t>{0, 1}, {1, 2}));
  const std::string size = error_of([&] { model->forward_cached(Tensor::from_vector(std::vector<int32_t>{1, 2}, {1, 2}), kv); });
  EXPECT_NE(size.find("decodes 2 tokens"), std::string::npos) << size;
  // The kernel refuses a node that does not see itself.
  const Tensor q = random_tensor({1, 2, 2, 4}, 1), k = random_tensor({1, 2, 2, 4}, 2);
  Tensor out = Tensor::empty({1, 2, 2, 4});
  const Tensor blind = Tensor::from_vector(std::vector<int32_t>{1, 0, 1, 0}, {2, 2});
  const std::string self = error_of([&] { kernels::tree_attention_forward(q, k, k, 0.5f, 0, blind, out); });
  EXPECT_NE(self.find("always sees itself"), std::string::npos) << self;
}

}  // namespace
