// Medusa decoding: the batched round loop, its checks, the default tree and the heads' measured
// accuracy (see the header).
#include "eval/medusa_decode.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <map>
#include <set>

#include "eval/medusa_choices.h"
#include "eval/medusa_verify.h"

namespace anvil {

namespace {

using Clock = DecodeClock;

// ids i32 [B, T] of the rows `which` of `rows`, tokens [from, from + T) of each, on `device`.
Tensor row_ids(const std::vector<std::vector<int32_t>>& rows, const std::vector<size_t>& which, int64_t from,
               int64_t T, Device device) {
  const int64_t B = static_cast<int64_t>(which.size());
  Tensor ids = Tensor::empty({B, T}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    std::copy(rows[which[b]].begin() + from, rows[which[b]].begin() + from + T, ids.data<int32_t>() + b * T);
  return ids.to(device);
}

// Row b's hidden state at node[b] of hidden [B, S, hidden], stacked: [B, 1, hidden] on its device.
Tensor gather_hidden(const Tensor& hidden, const std::vector<int32_t>& node) {
  const int64_t B = hidden.size(0);
  Tensor h = Tensor::empty({B, 1, hidden.size(2)}, hidden.dtype(), hidden.device());
  for (int64_t b = 0; b < B; ++b)
    h.slice(0, b, b + 1).copy_(hidden.slice(0, b, b + 1).slice(1, node[b], node[b] + 1));
  return h;
}

// Each row's top-k of heads 0 .. depth − 1 at h [B, 1, hidden]: [B, depth, k].
std::vector<int32_t> heads_topk(MedusaHeads& heads, const Tensor& h, int depth, int k) {
  const int64_t B = h.size(0), V = heads.vocab();
  std::vector<int32_t> topk(static_cast<size_t>(B * depth * k));
  for (int d = 0; d < depth; ++d) {
    const Tensor logits = host_f32(heads.infer_head(d, h));
    for (int64_t b = 0; b < B; ++b) {
      const std::vector<int32_t> best = best_tokens(logits.data<float>() + b * V, V, k);
      std::copy(best.begin(), best.end(), topk.begin() + (b * depth + d) * k);
    }
  }
  return topk;
}

// Decodes the prompts `which` (all of one length P) as one batch; adds to out and stats.
void medusa_batch(TransformerLM& base, MedusaHeads& heads, const MedusaTree& tree,
                  const std::vector<std::vector<int32_t>>& prompts, const std::vector<size_t>& which,
                  int max_new_tokens, const SamplingConfig& cfg, const MedusaAcceptance& acceptance,
                  std::optional<int32_t> stop_token, std::vector<std::vector<int32_t>>& out, SpeculativeStats& stats) {
  const int64_t B = static_cast<int64_t>(which.size());
  const int64_t P = static_cast<int64_t>(prompts[which[0]].size());
  const int64_t V = base.config().vocab_size, S = tree.size();
  const int depth = tree.depth(), k = tree.max_rank();
  const bool greedy = cfg.temperature == 0;  // greedy mode, or lossless at its T = 0 limit
  const bool typical = acceptance.mode == MedusaMode::Typical;
  // A row verifies with <= P + max_new_tokens - 1 committed tokens, all but the root cached, then the tree.
  const int64_t max_len = P + max_new_tokens + S - 2;
  const Clock::time_point prefill_start = Clock::now();
  KVCache kv(base.config(), B, max_len, base.device(), base.compute_dtype());
  std::vector<std::vector<int32_t>> seq(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) seq[b] = prompts[which[b]];
  Tensor h;  // [B, 1, hidden]: each row's hidden state at the token before its root
  if (P > 1) {
    const Tensor hidden = base.forward_cached_hidden(row_ids(prompts, which, 0, P - 1, base.device()), kv);
    h = hidden.slice(1, P - 2, P - 1).contiguous();
  }
  stats.prefill_seconds += seconds_since(prefill_start);

  const std::vector<uint8_t> mask = tree.tree.ancestor_mask();
  std::vector<bool> active(static_cast<size_t>(B), true);
  std::vector<double> p(static_cast<size_t>(S * V)), uniforms(static_cast<size_t>(S), 0.0);
  std::vector<int64_t> start(static_cast<size_t>(B));
  std::vector<int32_t> last(static_cast<size_t>(B), 0);  // each row's last accepted node
  for (uint32_t round = 0;; ++round) {
    Clock::time_point t0 = Clock::now();
    // A one-token prompt's first round has no hidden state before the root: the root repeated.
    const std::vector<int32_t> topk =
        h.defined() ? heads_topk(heads, h, depth, k) : std::vector<int32_t>(static_cast<size_t>(B * depth * k), -1);
    Tensor ids = Tensor::empty({B, S}, DType::I32);
    Tensor positions = Tensor::empty({B, S}, DType::I32);
    for (int64_t b = 0; b < B; ++b) {
      if (!active[b]) kv.truncate(b, 0);  // a finished row rides along from slot 0
      start[b] = kv.row_length(b);
      const int32_t root = seq[b].back();
      std::vector<int32_t> row_topk(topk.begin() + b * depth * k, topk.begin() + (b + 1) * depth * k);
      if (!h.defined()) std::fill(row_topk.begin(), row_topk.end(), root);
      const std::vector<int32_t> cand = medusa_candidates(tree, root, row_topk.data(), k);
      std::copy(cand.begin(), cand.end(), ids.data<int32_t>() + b * S);
      for (int64_t i = 0; i < S; ++i)
        positions.data<int32_t>()[b * S + i] = static_cast<int32_t>(start[b] + tree.tree.level[i]);
    }
    stats.draft_seconds += seconds_since(t0);
    kv.set_positions(positions);
    kv.set_tree(mask);
    t0 = Clock::now();
    const Tensor hidden = base.forward_cached_hidden(ids.to(base.device()), kv);
    const Tensor logits = host_f32(base.infer_head(hidden));
    stats.target_seconds += seconds_since(t0);
    ++stats.target_calls;

    t0 = Clock::now();
    for (int64_t b = 0; b < B; ++b) {
      last[b] = 0;
      if (!active[b]) continue;
      ++stats.target_row_forwards;
      verification_inputs(logits.data<float>(), b, S, V, cfg, static_cast<uint32_t>(which[b]), round, greedy, p,
                          uniforms);
      TreeRow row;
      row.tree = &tree.tree;
      row.vocab = V;
      row.tokens = ids.data<int32_t>() + b * S;
      row.q = nullptr;  // the heads' top-k: deterministic candidates
      row.p = p.data();
      const TreeVerdict verdict = typical ? verify_tree_typical(row, acceptance.epsilon, acceptance.delta, uniforms[0])
                                          : verify_tree(row, uniforms.data(), greedy);
      const int accepted = static_cast<int>(verdict.path.size());
      // Level i + 1 was tested when the path reached a node at level i that has children (an
      // irregular tree's accepted node may be a leaf).
      for (int i = 0; i < depth && i <= accepted; ++i) {
        if (tree.tree.leaf(i ? verdict.path[i - 1] : 0)) break;
        ++stats.reached[i];
        if (i < accepted) ++stats.accepted[i];
      }
      stats.committed += accepted + 1;
      // The cache keeps the committed tokens, the root and the accepted path.
      std::vector<int64_t> slots = {start[b]};
      std::vector<int32_t> tokens;
      for (int32_t c : verdict.path) {
        slots.push_back(start[b] + c);
        tokens.push_back(row.tokens[c]);
      }
      tokens.push_back(verdict.next);
      kv.keep(b, start[b], slots);
      last[b] = accepted ? verdict.path.back() : 0;
      stats.tokens += commit_tokens(tokens, max_new_tokens, stop_token, seq[b], out[which[b]]);
    }
    h = gather_hidden(hidden, last);  // where the next roots were chosen
    stats.verify_seconds += seconds_since(t0);
    if (!still_active(active, out, which, max_new_tokens, stop_token)) break;
  }
}

}  // namespace

MedusaMode parse_medusa_mode(const std::string& name, const std::string& where) {
  if (name == "greedy") return MedusaMode::Greedy;
  if (name == "lossless") return MedusaMode::Lossless;
  if (name == "typical") return MedusaMode::Typical;
  ANVIL_FAIL(where, ": '", name, "' is not a Medusa acceptance mode — choose greedy (T = 0: the base's greedy "
             "output), lossless (any T: the base's sampling distribution) or typical (T > 0: Medusa's typical "
             "acceptance, faster, not distribution-preserving)");
}

const char* medusa_mode_name(MedusaMode mode) {
  switch (mode) {
    case MedusaMode::Greedy: return "greedy";
    case MedusaMode::Lossless: return "lossless";
    case MedusaMode::Typical: return "typical";
  }
  return "?";
}

MedusaTree default_medusa_tree(int num_heads, int nodes) {
  ANVIL_CHECK(num_heads >= 1 && nodes >= 1, "default Medusa tree: needs >= 1 head and >= 1 node, got ", num_heads,
              " heads and ", nodes, " nodes");
  const std::string where = "the default Medusa tree (mc_sim_7b_63's first " + std::to_string(nodes) + " paths)";
  std::vector<std::vector<int>> published;
  for (const MedusaDefaultTree& t : medusa_default_trees())
    if (std::string(t.name) == "mc_sim_7b_63") published = parse_medusa_choices(t.choices, where);
  ANVIL_CHECK(!published.empty(), where, ": the published tree mc_sim_7b_63 is missing");
  std::set<std::vector<int>> kept;
  std::vector<std::vector<int>> paths;
  for (const std::vector<int>& path : published) {
    if (static_cast<int>(paths.size()) == nodes) break;
    if (static_cast<int>(path.size()) > num_heads) continue;
    // Its order keeps every prefix of the list a tree; check it all the same.
    if (path.size() > 1 && !kept.count(std::vector<int>(path.begin(), path.end() - 1))) continue;
    kept.insert(path);
    paths.push_back(path);
  }
  return MedusaTree::from_paths(paths, num_heads, where);
}

void check_medusa_decoding(const TransformerLM& base, const MedusaHeads& heads, const MedusaTree& tree,
                           const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                           const SamplingConfig& config, const MedusaAcceptance& acceptance,
                           std::optional<int32_t> stop_token) {
  config.validate();
  const ModelConfig& mc = base.config();
  ANVIL_CHECK(heads.hidden() == mc.hidden_size && heads.vocab() == mc.vocab_size, "Medusa decoding: the heads read ",
              "hidden size ", heads.hidden(), " and predict ", heads.vocab(), " tokens but the base has hidden size ",
              mc.hidden_size, " and ", mc.vocab_size, " tokens — the heads belong to another model");
  ANVIL_CHECK(tree.size() >= 2 && static_cast<int64_t>(tree.head.size()) == tree.size(), "Medusa decoding: the tree "
              "has no candidates — give a tree of >= 1 path, e.g. [(0,), (0, 0)]");
  ANVIL_CHECK(tree.depth() <= heads.heads(), "Medusa decoding: the tree is ", tree.depth(), " levels deep (its paths "
              "use head ", tree.depth(), ") but the model has ", heads.heads(), " Medusa heads — use a tree of depth <= ",
              heads.heads(), " (drop the longer paths) or train more heads");
  ANVIL_CHECK(mc.sliding_window == 0, "Medusa decoding: the base attends through a sliding window of ",
              mc.sliding_window, " positions, which the tree mask does not support — decode it without --medusa");
  const double T = config.temperature;
  switch (acceptance.mode) {
    case MedusaMode::Greedy:
      ANVIL_CHECK(T == 0, "Medusa decoding: greedy acceptance decodes at temperature 0, got ", T, " — set the "
                  "temperature to 0, or choose lossless (any temperature) or typical acceptance");
      break;
    case MedusaMode::Typical:
      ANVIL_CHECK(T > 0, "Medusa decoding: typical acceptance samples and needs a temperature > 0 — at temperature 0 "
                  "choose greedy (or lossless) acceptance");
      ANVIL_CHECK(acceptance.epsilon > 0 && acceptance.delta > 0, "Medusa decoding: typical acceptance needs a "
                  "posterior threshold epsilon > 0 and alpha delta > 0, got ", acceptance.epsilon, " and ",
                  acceptance.delta, " — Medusa's defaults are 0.09 and 0.3");
      break;
    case MedusaMode::Lossless: break;
  }
  ANVIL_CHECK(max_new_tokens >= 0, "Medusa decoding: max_new_tokens must be >= 0, got ", max_new_tokens);
  ANVIL_CHECK(!stop_token || (*stop_token >= 0 && *stop_token < mc.vocab_size), "Medusa decoding: stop token ",
              stop_token.value_or(0), " is outside the vocabulary [0, ", mc.vocab_size, ")");
  ANVIL_CHECK(prompts.size() <= std::numeric_limits<uint32_t>::max(), "Medusa decoding: too many prompts");
  const int64_t room = mc.max_position_embeddings, nodes = tree.nodes();
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& pr = prompts[i];
    ANVIL_CHECK(!pr.empty(), "Medusa decoding: prompt ", i, " is empty — every prompt needs at least one token");
    const int64_t need = static_cast<int64_t>(pr.size()) + max_new_tokens + nodes - 1;
    ANVIL_CHECK(need <= room, "Medusa decoding: the tree has ", nodes, " nodes; with prompt ", i, " of ", pr.size(),
                " tokens and ", max_new_tokens, " new tokens the cache needs ", need, " slots (prompt + new tokens + "
                "tree nodes - 1), more than the base's ", room, " (max_position_embeddings) — use a smaller tree, "
                "shorten the prompt or lower the new tokens to ",
                std::max<int64_t>(0, room - static_cast<int64_t>(pr.size()) - nodes + 1));
    for (size_t t = 0; t < pr.size(); ++t)
      ANVIL_CHECK(pr[t] >= 0 && pr[t] < mc.vocab_size, "Medusa decoding: prompt ", i, " token ", t, " is ", pr[t],
                  ", outside the vocabulary [0, ", mc.vocab_size, ")");
  }
}

SpeculativeResult medusa_generate(TransformerLM& base, MedusaHeads& heads, const MedusaTree& tree,
                                  const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                                  const SamplingConfig& config, const MedusaAcceptance& acceptance,
                                  std::optional<int32_t> stop_token) {
  check_medusa_decoding(base, heads, tree, prompts, max_new_tokens, config, acceptance, stop_token);
  SpeculativeResult result = empty_speculative_result(prompts.size(), tree.depth());
  SpeculativeStats& stats = result.stats;
  stats.tree_width = 0;  // an irregular tree
  stats.tree_nodes = tree.nodes();
  if (max_new_tokens == 0) return result;
  const Clock::time_point t0 = Clock::now();
  for (const auto& [length, which] : prompts_by_length(prompts))
    medusa_batch(base, heads, tree, prompts, which, max_new_tokens, config, acceptance, stop_token, result.tokens,
                 stats);
  stats.total_seconds = seconds_since(t0);
  return result;
}

std::vector<std::vector<double>> measure_medusa_accuracy(TransformerLM& base, MedusaHeads& heads,
                                                         const std::vector<std::vector<int32_t>>& prompts,
                                                         int continuation, int topk, std::vector<int64_t>* positions) {
  const int64_t K = heads.heads(), V = heads.vocab();
  ANVIL_CHECK(!prompts.empty() && continuation >= 1 && topk >= 1, "Medusa calibration: needs >= 1 prompt, >= 1 "
              "continuation token and top-k >= 1, got ", prompts.size(), " prompts, ", continuation, " and ", topk);
  for (size_t i = 0; i < prompts.size(); ++i)
    ANVIL_CHECK(!prompts[i].empty() && static_cast<int64_t>(prompts[i].size()) + continuation <=
                                           base.config().max_position_embeddings,
                "Medusa calibration: prompt ", i, " of ", prompts[i].size(), " tokens and ", continuation,
                " continuation tokens do not fit the base's ", base.config().max_position_embeddings,
                " positions (and a prompt needs >= 1 token) — shorten the prompts or the continuation");
  std::vector<std::vector<int64_t>> hits(static_cast<size_t>(K), std::vector<int64_t>(static_cast<size_t>(topk), 0));
  std::vector<int64_t> scored(static_cast<size_t>(K), 0);
  for (const auto& [length, which] : prompts_by_length(prompts)) {
    std::vector<std::vector<int32_t>> group;
    for (size_t i : which) group.push_back(prompts[i]);
    const auto more = generate(base, group, continuation, SamplingConfig::greedy());
    std::vector<std::vector<int32_t>> full = group;
    for (size_t b = 0; b < full.size(); ++b) full[b].insert(full[b].end(), more[b].begin(), more[b].end());
    const int64_t B = static_cast<int64_t>(full.size()), P = static_cast<int64_t>(length);
    const int64_t L = P + continuation;
    std::vector<size_t> rows(full.size());
    for (size_t b = 0; b < rows.size(); ++b) rows[b] = b;
    KVCache kv(base.config(), B, L, base.device(), base.compute_dtype());
    const Tensor hidden = base.forward_cached_hidden(row_ids(full, rows, 0, L, base.device()), kv);
    for (int64_t k = 0; k < K; ++k) {
      // Head k at position t predicts token t + k + 2: positions from the prompt's last token on.
      const int64_t first = P - 1, end = L - k - 2;
      if (end <= first) continue;
      const Tensor logits = host_f32(heads.infer_head(k, hidden.slice(1, first, end).contiguous()));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = first; t < end; ++t) {
          const float* z = logits.data<float>() + (b * (end - first) + (t - first)) * V;
          const std::vector<int32_t> best = best_tokens(z, V, topk);
          const int32_t want = full[b][t + k + 2];
          for (int i = 0; i < topk && i < V; ++i)
            if (best[i] == want) {
              ++hits[k][i];
              break;
            }
          ++scored[k];
        }
    }
  }
  std::vector<std::vector<double>> accuracy(static_cast<size_t>(K), std::vector<double>(static_cast<size_t>(topk), 0));
  for (int64_t k = 0; k < K; ++k)
    for (int i = 0; i < topk; ++i)
      accuracy[k][i] = scored[k] ? static_cast<double>(hits[k][i]) / static_cast<double>(scored[k]) : 0.0;
  if (positions) *positions = scored;
  return accuracy;
}

// ---- A tree sized to the machine ----

double MedusaCostModel::round_seconds(int64_t tree_nodes, int depth) const {
  const double heads_seconds = head_seconds * depth;
  ANVIL_CHECK(!sizes.empty() && sizes.size() == verify_seconds.size(), "MedusaCostModel: no measurements");
  const double T = static_cast<double>(tree_nodes + 1);  // the root and the nodes
  size_t i = 1;
  while (i + 1 < sizes.size() && static_cast<double>(sizes[i]) < T) ++i;
  if (sizes.size() == 1) return verify_seconds[0] + heads_seconds;
  const double x0 = static_cast<double>(sizes[i - 1]), x1 = static_cast<double>(sizes[i]);
  const double y = verify_seconds[i - 1] + (verify_seconds[i] - verify_seconds[i - 1]) * (T - x0) / (x1 - x0);
  return std::max(y, 0.0) + heads_seconds;
}

MedusaCostModel measure_medusa_cost(TransformerLM& base, MedusaHeads& heads, int64_t max_nodes, int64_t prefix,
                                    int repeats) {
  const ModelConfig& mc = base.config();
  ANVIL_CHECK(max_nodes >= 1 && repeats >= 1, "measure_medusa_cost: max_nodes and repeats must be >= 1");
  ANVIL_CHECK(prefix >= 1 && prefix + max_nodes + 1 <= mc.max_position_embeddings, "measure_medusa_cost: a prefix of ",
              prefix, " tokens and a tree of ", max_nodes, " nodes exceed the base's ", mc.max_position_embeddings,
              " positions — lower the tree's size");
  MedusaCostModel cost;
  for (int64_t T = 1; T < max_nodes + 1; T *= 2) cost.sizes.push_back(T);
  cost.sizes.push_back(max_nodes + 1);
  KVCache kv(mc, 1, prefix + max_nodes + 1, base.device(), base.compute_dtype());
  auto tokens = [&](int64_t n, int64_t offset) {  // any ids: the cost does not depend on them
    Tensor ids = Tensor::empty({1, n}, DType::I32);
    for (int64_t i = 0; i < n; ++i) ids.data<int32_t>()[i] = static_cast<int32_t>((7 * (i + offset) + 1) % mc.vocab_size);
    return ids.to(base.device());
  };
  base.forward_cached(tokens(prefix, 0), kv, /*last_position_only=*/true);
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::vector<std::vector<double>> verify(cost.sizes.size());
  std::vector<double> heads_t, plain_t;
  Tensor h;
  for (int r = 0; r < repeats; ++r) {  // sizes interleaved, so drifting load hits them alike
    for (size_t j = 0; j < cost.sizes.size(); ++j) {
      const int64_t T = cost.sizes[j];
      kv.truncate(0, prefix);
      if (T > 1) {  // a root with T − 1 children (T = 1: the root alone, plainly causal)
        std::vector<int32_t> parent(static_cast<size_t>(T), 0);
        parent[0] = -1;
        const DraftTree star = DraftTree::from_parents(parent, "measure_medusa_cost");
        Tensor positions = Tensor::empty({1, T}, DType::I32);
        for (int64_t i = 0; i < T; ++i) positions.data<int32_t>()[i] = static_cast<int32_t>(prefix + star.level[i]);
        kv.set_positions(positions);
        kv.set_tree(star.ancestor_mask());
      }
      const Clock::time_point t0 = Clock::now();
      h = base.forward_cached_hidden(tokens(T, prefix), kv);
      host_f32(base.infer_head(h));
      verify[j].push_back(seconds_since(t0));
    }
    kv.truncate(0, prefix);
    Clock::time_point t0 = Clock::now();
    host_f32(base.forward_cached(tokens(1, prefix), kv));
    plain_t.push_back(seconds_since(t0));
    const Tensor last = h.slice(1, 0, 1).contiguous();
    t0 = Clock::now();
    for (int64_t k = 0; k < heads.heads(); ++k) host_f32(heads.infer_head(k, last));
    heads_t.push_back(seconds_since(t0));
  }
  for (const auto& v : verify) cost.verify_seconds.push_back(median(v));
  cost.head_seconds = median(heads_t) / static_cast<double>(heads.heads());
  cost.plain_seconds = median(plain_t);
  return cost;
}

SpeedTree build_medusa_tree_for_speed(const std::vector<std::vector<double>>& accuracy, int max_nodes,
                                      const MedusaCostModel& cost) {
  ANVIL_CHECK(max_nodes >= 1, "build_medusa_tree_for_speed: max_nodes must be >= 1, got ", max_nodes);
  SpeedTree best;
  for (int n = 1; n <= max_nodes; ++n) {
    MedusaTree tree = build_medusa_tree(accuracy, n);
    const double tau = 1.0 + expected_accept_length(tree, accuracy);
    const double speedup = tau * cost.plain_seconds / cost.round_seconds(tree.nodes(), tree.depth());
    if (speedup > best.predicted_speedup) best = {std::move(tree), tau, speedup};
  }
  return best;
}

}  // namespace anvil
