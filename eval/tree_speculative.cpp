// Tree speculative decoding: the standalone-LM tree drafter and the batched decoding loop (see
// the header).
#include "eval/tree_speculative.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>

namespace anvil {

namespace {

using Clock = DecodeClock;

// The ancestor mask of the first n nodes of a tree (breadth first: they form a subtree).
std::vector<uint8_t> leading_mask(const DraftTree& tree, int64_t n) {
  const std::vector<uint8_t> full = tree.ancestor_mask();
  const int64_t S = tree.size();
  std::vector<uint8_t> m(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i) std::copy(full.begin() + i * S, full.begin() + i * S + n, m.begin() + i * n);
  return m;
}

// Positions start[b] + level of the first n nodes, i32 [B, n].
Tensor tree_positions(const DraftTree& tree, const std::vector<int64_t>& start, int64_t n) {
  const int64_t B = static_cast<int64_t>(start.size());
  Tensor pos = Tensor::empty({B, n}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < n; ++i) pos.data<int32_t>()[b * n + i] = static_cast<int32_t>(start[b] + tree.level[i]);
  return pos;
}

}  // namespace

// ---- LMTreeDrafter ----

LMTreeDrafter::LMTreeDrafter(TransformerLM& model) : model_(model) {
  ANVIL_CHECK(model.config().sliding_window == 0, "LMTreeDrafter: the drafter attends through a sliding window of ",
              model.config().sliding_window, " positions, which the tree mask does not support — decode with chains "
              "(tree width 1)");
  ANVIL_CHECK(model.mask_tokens() == 0, "LMTreeDrafter: the drafter has ", model.mask_tokens(), " ParallelSpec mask "
              "tokens — it proposes a chain in one forward; decode it without a tree (tree width 1)");
}

void LMTreeDrafter::begin(const DraftSetup& setup, const DraftTree& tree) {
  check_draft_setup(setup, "LMTreeDrafter");
  const int64_t B = static_cast<int64_t>(setup.prompts.size());
  kv_ = std::make_unique<KVCache>(model_.config(), B, setup.max_len, model_.device(), model_.compute_dtype());
  rows_.begin(setup);
  prefill_prompts(model_, *kv_, rows_);
  tree_ = tree;
}

int64_t LMTreeDrafter::catch_up(const std::vector<bool>& active) {
  const int64_t B = kv_->batch();
  bool behind = false;
  for (int64_t b = 0; b < B; ++b)
    behind = behind || (active[b] && rows_.fed[b] + 1 < static_cast<int64_t>(rows_.committed[b].size()));
  if (!behind) return 0;
  Tensor ids = Tensor::empty({B, 1}, DType::I32);
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int32_t>& seq = rows_.committed[b];
    const int64_t length = static_cast<int64_t>(seq.size());
    if (!active[b] || length < 2) {  // rides along from slot 0
      kv_->truncate(b, 0);
      ids.data<int32_t>()[b] = seq.back();
      continue;
    }
    kv_->truncate(b, length - 2);
    ids.data<int32_t>()[b] = seq[length - 2];
    rows_.fed[b] = length - 1;
  }
  model_.forward_cached(ids.to(model_.device()), *kv_, /*last_position_only=*/true);
  return 1;
}

TreeBlock LMTreeDrafter::propose(uint32_t round, const std::vector<bool>& active) {
  ANVIL_CHECK(kv_ != nullptr, "LMTreeDrafter: propose() before begin()");
  const int64_t B = kv_->batch(), V = model_.config().vocab_size, S = tree_.size();
  const SamplingConfig& sampling = rows_.setup.sampling;
  const bool greedy = sampling.temperature == 0;
  TreeBlock block;
  block.size = S, block.vocab = V;
  block.tokens.assign(static_cast<size_t>(B * S), 0);
  block.q.assign(static_cast<size_t>(B * S * V), 0.0);
  block.forwards = catch_up(active);
  std::vector<int64_t> start(static_cast<size_t>(B), 0);  // the root's slot
  for (int64_t b = 0; b < B; ++b) {
    std::fill(block.tokens.begin() + b * S, block.tokens.begin() + (b + 1) * S, rows_.committed[b].back());
    start[b] = active[b] ? rows_.fed[b] : 0;  // a finished row rides along from slot 0
  }
  int64_t level_begin = 0;  // the first node of the level whose children are drawn
  for (int d = 0; d < tree_.depth; ++d) {
    int64_t n = level_begin;
    while (n < S && tree_.level[n] <= d) ++n;  // the root and every node of level <= d
    for (int64_t b = 0; b < B; ++b) kv_->truncate(b, start[b]);
    Tensor ids = Tensor::empty({B, n}, DType::I32);
    for (int64_t b = 0; b < B; ++b)
      std::copy(block.tokens.begin() + b * S, block.tokens.begin() + b * S + n, ids.data<int32_t>() + b * n);
    kv_->set_positions(tree_positions(tree_, start, n));
    kv_->set_tree(leading_mask(tree_, n));
    const Tensor logits = host_f32(model_.forward_cached(ids.to(model_.device()), *kv_));
    ++block.forwards;
    for (int64_t b = 0; b < B; ++b) {
      if (!active[b]) continue;
      for (int64_t i = level_begin; i < n; ++i) {
        const float* z = logits.data<float>() + (b * n + i) * V;
        const std::vector<double> q = sampling_distribution(z, V, sampling);
        std::copy(q.begin(), q.end(), block.q.begin() + (b * S + i) * V);
        const int32_t first = tree_.first_child[i], count = tree_.children[i];
        const std::vector<int32_t> best = greedy && count > 0 ? best_tokens(z, V, count) : std::vector<int32_t>();
        for (int32_t c = first; c < first + count; ++c)
          block.tokens[b * S + c] = greedy ? best[c - first]
                                           : draw_draft_token(q, sampling, rows_.setup.sequences[b], round, c - 1);
      }
    }
    level_begin = n;
  }
  drafted_ = block.tokens;
  return block;
}

void LMTreeDrafter::commit(const std::vector<bool>& active, const std::vector<std::vector<int32_t>>& paths,
                           const std::vector<int32_t>& next) {
  const int64_t B = kv_->batch(), S = tree_.size();
  for (int64_t b = 0; b < B; ++b) {
    if (!active[b]) continue;
    const int64_t root = rows_.fed[b];
    // The cache holds the root and every node above the leaves at root + node index.
    std::vector<int64_t> slots = {root};
    for (int32_t c : paths[b]) {
      ANVIL_CHECK(c >= 1 && c < S, "LMTreeDrafter: row ", b, " accepted node ", c, ", outside the tree [1, ", S, ")");
      if (!tree_.leaf(c)) slots.push_back(root + c);
      rows_.committed[b].push_back(drafted_[b * S + c]);
    }
    rows_.committed[b].push_back(next[b]);
    kv_->keep(b, root, slots);
    rows_.fed[b] = root + static_cast<int64_t>(slots.size());
  }
}

// ---- Decoding ----

namespace {

// Decodes the prompts `which` (all of one length P) as one batch; adds to out and stats.
void tree_batch(TransformerLM& target, TreeDrafter& drafter, const DraftTree& tree,
                const std::vector<std::vector<int32_t>>& prompts, const std::vector<size_t>& which, int max_new_tokens,
                const SamplingConfig& cfg, std::optional<int32_t> stop_token, std::vector<std::vector<int32_t>>& out,
                SpeculativeStats& stats) {
  const int64_t B = static_cast<int64_t>(which.size());
  const int64_t P = static_cast<int64_t>(prompts[which[0]].size());
  const int64_t V = target.config().vocab_size, S = tree.size();
  const bool greedy = cfg.temperature == 0;
  // A row verifies with <= P + max_new_tokens - 1 committed tokens, all but the last cached, then the tree.
  const int64_t max_len = P + max_new_tokens + S - 2;
  const Clock::time_point prefill_start = Clock::now();
  KVCache kv(target.config(), B, max_len, target.device(), target.compute_dtype());
  std::vector<std::vector<int32_t>> seq(static_cast<size_t>(B));
  DraftSetup setup;
  setup.gamma = tree.depth;
  setup.max_len = max_len;
  setup.sampling = cfg;
  for (int64_t b = 0; b < B; ++b) {
    seq[b] = prompts[which[b]];
    setup.prompts.push_back(seq[b]);
    setup.sequences.push_back(static_cast<uint32_t>(which[b]));
  }
  if (P > 1) {
    Tensor ids = Tensor::empty({B, P - 1}, DType::I32);
    for (int64_t b = 0; b < B; ++b) std::copy(seq[b].begin(), seq[b].end() - 1, ids.data<int32_t>() + b * (P - 1));
    target.forward_cached(ids.to(target.device()), kv, /*last_position_only=*/true);
  }
  drafter.begin(setup, tree);
  stats.prefill_seconds += seconds_since(prefill_start);

  const std::vector<uint8_t> mask = tree.ancestor_mask();
  std::vector<bool> active(static_cast<size_t>(B), true);
  std::vector<std::vector<int32_t>> paths(static_cast<size_t>(B));
  std::vector<int32_t> next(static_cast<size_t>(B), 0);
  std::vector<double> p(static_cast<size_t>(S * V)), uniforms(static_cast<size_t>(S), 0.0);
  std::vector<int64_t> start(static_cast<size_t>(B));
  for (uint32_t round = 0;; ++round) {
    Clock::time_point t0 = Clock::now();
    const TreeBlock block = drafter.propose(round, active);
    stats.draft_seconds += seconds_since(t0);
    stats.drafter_calls += block.forwards;
    ANVIL_CHECK(block.size == S && block.vocab == V && static_cast<int64_t>(block.tokens.size()) == B * S &&
                    static_cast<int64_t>(block.q.size()) == B * S * V,
                "tree speculative decoding: the drafter returned a block of the wrong shape (", block.size,
                " nodes, vocab ", block.vocab, ") for ", B, " rows of a ", S, "-node tree over ", V, " tokens");
    Tensor ids = Tensor::empty({B, S}, DType::I32);
    for (int64_t b = 0; b < B; ++b) {
      if (!active[b]) kv.truncate(b, 0);  // a finished row rides along from slot 0
      start[b] = kv.row_length(b);
      int32_t* row = ids.data<int32_t>() + b * S;
      std::copy(block.tokens.begin() + b * S, block.tokens.begin() + (b + 1) * S, row);
      row[0] = seq[b].back();
    }
    kv.set_positions(tree_positions(tree, start, S));
    kv.set_tree(mask);
    t0 = Clock::now();
    const Tensor logits = host_f32(target.forward_cached(ids.to(target.device()), kv));
    stats.target_seconds += seconds_since(t0);
    ++stats.target_calls;

    t0 = Clock::now();
    for (int64_t b = 0; b < B; ++b) {
      if (!active[b]) continue;
      ++stats.target_row_forwards;
      verification_inputs(logits.data<float>(), b, S, V, cfg, setup.sequences[b], round, greedy, p, uniforms);
      TreeRow row;
      row.tree = &tree;
      row.vocab = V;
      row.tokens = ids.data<int32_t>() + b * S;
      row.q = block.q.data() + b * S * V;
      row.p = p.data();
      TreeVerdict verdict = verify_tree(row, uniforms.data(), greedy);
      const int accepted = static_cast<int>(verdict.path.size());
      for (int i = 0; i < tree.depth && i <= accepted; ++i) {
        ++stats.reached[i];
        if (i < accepted) ++stats.accepted[i];
      }
      stats.committed += accepted + 1;
      // The target's cache keeps the committed tokens and the accepted path (its root first).
      std::vector<int64_t> slots = {start[b]};
      for (int32_t c : verdict.path) slots.push_back(start[b] + c);
      kv.keep(b, start[b], slots);
      std::vector<int32_t> tokens;
      for (int32_t c : verdict.path) tokens.push_back(row.tokens[c]);
      tokens.push_back(verdict.next);
      stats.tokens += commit_tokens(tokens, max_new_tokens, stop_token, seq[b], out[which[b]]);
      paths[b] = std::move(verdict.path);
      next[b] = verdict.next;
    }
    stats.verify_seconds += seconds_since(t0);
    drafter.commit(active, paths, next);
    if (!still_active(active, out, which, max_new_tokens, stop_token)) break;
  }
}

}  // namespace

void check_tree_decoding(const TransformerLM& target, int64_t drafter_vocab, int64_t drafter_positions,
                         const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                         const SamplingConfig& config, int width, int depth, std::optional<int32_t> stop_token) {
  config.validate();
  const DraftTree tree = DraftTree::complete(width, depth);
  const ModelConfig& mc = target.config();
  ANVIL_CHECK(drafter_vocab == mc.vocab_size, "tree speculative decoding: the drafter's vocabulary has ",
              drafter_vocab, " tokens but the target's has ", mc.vocab_size,
              " — a drafter must share the target's tokenizer and vocab_size (train it with the target's tokenizer)");
  ANVIL_CHECK(mc.sliding_window == 0, "tree speculative decoding: the target attends through a sliding window of ",
              mc.sliding_window, " positions, which the tree mask does not support — decode it with chains (tree "
              "width 1, i.e. without --tree-width)");
  ANVIL_CHECK(max_new_tokens >= 0, "tree speculative decoding: max_new_tokens must be >= 0, got ", max_new_tokens);
  ANVIL_CHECK(!stop_token || (*stop_token >= 0 && *stop_token < mc.vocab_size), "tree speculative decoding: stop "
              "token ", stop_token.value_or(0), " is outside the vocabulary [0, ", mc.vocab_size, ")");
  ANVIL_CHECK(prompts.size() <= std::numeric_limits<uint32_t>::max(), "tree speculative decoding: too many prompts");
  const int64_t room = std::min(mc.max_position_embeddings, drafter_positions);
  const int64_t nodes = tree.nodes();
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& pr = prompts[i];
    ANVIL_CHECK(!pr.empty(), "tree speculative decoding: prompt ", i, " is empty — every prompt needs at least one "
                "token");
    const int64_t need = static_cast<int64_t>(pr.size()) + max_new_tokens + nodes - 1;
    ANVIL_CHECK(need <= room, "tree speculative decoding: a tree of width ", width, " and depth ", depth, " has ",
                nodes, " nodes; with prompt ", i, " of ", pr.size(), " tokens and ", max_new_tokens,
                " new tokens the cache needs ", need, " slots (prompt + new tokens + tree nodes - 1), more than the ",
                room, " the ", mc.max_position_embeddings <= drafter_positions ? "target" : "drafter",
                " has (max_position_embeddings) — lower the tree's width or depth, shorten the prompt or lower "
                "max_new_tokens to ", std::max<int64_t>(0, room - static_cast<int64_t>(pr.size()) - nodes + 1));
    for (size_t t = 0; t < pr.size(); ++t)
      ANVIL_CHECK(pr[t] >= 0 && pr[t] < mc.vocab_size, "tree speculative decoding: prompt ", i, " token ", t, " is ",
                  pr[t], ", outside the vocabulary [0, ", mc.vocab_size, ")");
  }
}

SpeculativeResult tree_speculative_generate(TransformerLM& target, TreeDrafter& drafter,
                                            const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                                            const SamplingConfig& config, int width, int depth,
                                            std::optional<int32_t> stop_token) {
  check_tree_decoding(target, drafter.vocab_size(), drafter.max_positions(), prompts, max_new_tokens, config, width,
                      depth, stop_token);
  const DraftTree tree = DraftTree::complete(width, depth);
  SpeculativeResult result = empty_speculative_result(prompts.size(), depth);
  SpeculativeStats& stats = result.stats;
  stats.tree_width = width;
  if (max_new_tokens == 0) return result;
  const Clock::time_point t0 = Clock::now();
  for (const auto& [length, which] : prompts_by_length(prompts))
    tree_batch(target, drafter, tree, prompts, which, max_new_tokens, config, stop_token, result.tokens, stats);
  stats.total_seconds = seconds_since(t0);
  return result;
}

}  // namespace anvil
