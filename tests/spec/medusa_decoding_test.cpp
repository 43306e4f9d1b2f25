// medusa_generate end to end on the tiny random spec target (eval/medusa_decode.h): greedy output
// equals greedy generate() token for token (batch 1, a batch of 3 different prompts, mixed
// lengths with a one-token prompt, a stop token; K = 2..4 heads as the medusa task initialises them
// and random ones; the default tree, a published tree, small custom trees); at T > 0 lossless
// acceptance's first three tokens follow plain sampling (two-sample chi-square) while typical
// acceptance with a large δ visibly does not (the test's power); every token typical acceptance
// commits has p >= its threshold under the base (recomputed by a plain forward); the heads'
// measured accuracy against a count on the greedy text; and the bad inputs, refused before any work.
#include <gtest/gtest.h>

#include <cstdio>

#include "eval/medusa_decode.h"
#include "eval/medusa_verify.h"
#include "tests/spec/spec_models.h"
#include "tests/spec/spec_stats.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

const std::vector<std::vector<int32_t>> kOnePrompt = {{1, 5, 9, 2}};
const std::vector<std::vector<int32_t>> kThreePrompts = {{3, 4, 5, 6}, {7, 8, 9, 10}, {20, 21, 22, 23}};
const std::vector<std::vector<int32_t>> kMixedLengths = {{1, 2, 3}, {4, 5, 6, 7, 8}, {9, 10, 11}, {30}};

// K heads on the target. As the medusa task starts them (W1 = 0, b1 small, W2 = the base's LM
// head: each head proposes about what the base would, one position late) unless `random`.
std::unique_ptr<MedusaHeads> make_heads(TransformerLM& base, int64_t K, bool random, int64_t layers = 1) {
  const ModelConfig& c = base.config();
  auto heads = std::make_unique<MedusaHeads>(K, layers, c.hidden_size, c.vocab_size, nullptr);
  init_params(heads->params(), 11, 0.02f, 0.02f);
  if (random)
    randomize_params(heads->params());
  else
    heads->copy_lm_head(base);
  return heads;
}

// The stats' own bookkeeping: every row-round tests level 1, level i + 1 only after level i was
// accepted (not always: the accepted node may be a leaf), and each round commits its accepted
// nodes plus the next token.
void expect_consistent(const SpeculativeStats& st, const std::string& tag) {
  int64_t kept = 0;
  for (int64_t a : st.accepted) kept += a;
  EXPECT_EQ(st.reached[0], st.target_row_forwards) << tag;
  EXPECT_EQ(st.committed, kept + st.target_row_forwards) << tag;
  for (size_t i = 1; i < st.reached.size(); ++i) EXPECT_LE(st.reached[i], st.accepted[i - 1]) << tag;
  EXPECT_GE(st.tau(), 1.0) << tag;
  EXPECT_LE(st.tau(), st.gamma + 1.0) << tag;
}

TEST(MedusaGreedy, EqualsGreedyGenerateTokenForToken) {
  Models& m = models();
  const int max_new = 21;
  MedusaAcceptance greedy;
  greedy.mode = MedusaMode::Greedy;
  struct Case {
    int64_t K;
    std::string tree;  // "" = the default tree
  };
  const std::vector<Case> cases = {{2, ""}, {3, ""}, {3, "[(0,), (1,), (0, 0), (0, 1), (0, 0, 0)]"},
                                   {2, "[(0,), (1,), (2,), (0, 0), (1, 0)]"}, {4, "mc_sim_7b_63"}};
  double best_tau = 0;
  for (const auto* prompts : {&kOnePrompt, &kThreePrompts, &kMixedLengths}) {
    const auto want = generate(*m.target, *prompts, max_new, SamplingConfig::greedy());
    for (const Case& c : cases) {
      for (const bool random : {false, true}) {
        const auto heads = make_heads(*m.target, c.K, random);
        const MedusaTree tree = c.tree.empty() ? default_medusa_tree(static_cast<int>(c.K))
                                               : load_medusa_tree(c.tree, static_cast<int>(c.K), "test");
        const std::string tag = "batch " + std::to_string(prompts->size()) + ", K " + std::to_string(c.K) + ", tree " +
                                (c.tree.empty() ? "default" : c.tree) + (random ? ", random heads" : ", task init");
        for (const MedusaMode mode : {MedusaMode::Greedy, MedusaMode::Lossless}) {  // lossless at T = 0 is greedy
          MedusaAcceptance a;
          a.mode = mode;
          const SpeculativeResult got =
              medusa_generate(*m.target, *heads, tree, *prompts, max_new, SamplingConfig::greedy(), a);
          EXPECT_EQ(got.tokens, want) << tag;
          EXPECT_EQ(got.stats.tokens, static_cast<int64_t>(prompts->size()) * max_new) << tag;
          expect_consistent(got.stats, tag);
          if (!random) best_tau = std::max(best_tau, got.stats.tau());
        }
      }
    }
  }
  // The task-initialised heads propose tokens the base takes: paths of different lengths per row.
  EXPECT_GT(best_tau, 1.2);
}

// Medusa greedy decoding of one prompt without a KV cache or tree mask: every hidden state and
// every node's argmax from a plain forward over the whole text up to it. Returns the tokens and
// adds each level's tested / accepted counts (the stats medusa_generate keeps).
std::vector<int32_t> naive_medusa_greedy(TransformerLM& base, MedusaHeads& heads, const MedusaTree& tree,
                                         const std::vector<int32_t>& prompt, int max_new, std::vector<int64_t>& reached,
                                         std::vector<int64_t>& accepted) {
  const int64_t V = base.config().vocab_size;
  const int depth = tree.depth(), k = tree.max_rank();
  // The hidden state at the last position of `text`, [1, 1, hidden].
  auto last_hidden = [&](const std::vector<int32_t>& text) {
    Cache c;
    const int64_t L = static_cast<int64_t>(text.size());
    return base.forward_hidden(Tensor::from_vector(text, {1, L}), c).slice(1, L - 1, L).contiguous();
  };
  auto argmax_after = [&](const std::vector<int32_t>& text) {
    const Tensor z = host_f32(base.infer_head(last_hidden(text)));
    return best_tokens(z.data<float>(), V, 1)[0];
  };
  std::vector<int32_t> x = prompt, out;
  while (static_cast<int>(out.size()) < max_new) {
    std::vector<int32_t> topk(static_cast<size_t>(depth * k), x.back());  // a one-token text: the root repeated
    if (x.size() >= 2) {
      const Tensor h = last_hidden(std::vector<int32_t>(x.begin(), x.end() - 1));  // where the root was chosen
      for (int d = 0; d < depth; ++d) {
        const Tensor z = host_f32(heads.infer_head(d, h));
        const std::vector<int32_t> best = best_tokens(z.data<float>(), V, k);
        std::copy(best.begin(), best.end(), topk.begin() + d * k);
      }
    }
    const std::vector<int32_t> tokens = medusa_candidates(tree, x.back(), topk.data(), k);
    std::vector<int32_t> text = x, commit;
    int32_t node = 0, want = argmax_after(text);
    for (int level = 0; level < depth; ++level) {
      const int32_t first = tree.tree.first_child[node], count = tree.tree.children[node];
      if (count == 0) break;
      ++reached[level];
      int32_t hit = -1;
      for (int32_t c = first; c < first + count && hit < 0; ++c)
        if (tokens[c] == want) hit = c;
      if (hit < 0) break;
      ++accepted[level];
      node = hit;
      text.push_back(tokens[hit]);
      commit.push_back(tokens[hit]);
      want = argmax_after(text);
    }
    commit.push_back(want);
    for (int32_t t : commit)
      if (static_cast<int>(out.size()) < max_new) out.push_back(t), x.push_back(t);
  }
  return out;
}

TEST(MedusaGreedy, EveryRoundMatchesANaiveDecoderWithoutCacheOrMask) {
  // Which candidates each round tests depends on the heads reading the right hidden state (the
  // accepted path's last node) — the output does not (any candidates give greedy's tokens), the
  // counts of tested and accepted candidates per level do.
  Models& m = models();
  const int max_new = 24;
  for (const std::string& spec : {std::string("[(0,), (1,), (2,), (0, 0), (1, 0), (0, 1), (0, 0, 0), (0, 0, 1)]"),
                                  std::string("")}) {
    const auto heads = make_heads(*m.target, 3, false);
    const MedusaTree tree = spec.empty() ? default_medusa_tree(3) : load_medusa_tree(spec, 3, "test");
    std::vector<int64_t> reached(3, 0), accepted(3, 0);
    std::vector<std::vector<int32_t>> want;
    for (const auto& prompt : kMixedLengths)
      want.push_back(naive_medusa_greedy(*m.target, *heads, tree, prompt, max_new, reached, accepted));
    const SpeculativeResult got =
        medusa_generate(*m.target, *heads, tree, kMixedLengths, max_new, SamplingConfig::greedy(), {MedusaMode::Greedy});
    EXPECT_EQ(got.tokens, want) << spec;
    EXPECT_EQ(got.stats.reached, reached) << spec;
    EXPECT_EQ(got.stats.accepted, accepted) << spec;
    EXPECT_GT(accepted[1], 0) << spec;  // paths deeper than one level were kept
  }
}

TEST(MedusaGreedy, StopTokenAndStatsLine) {
  Models& m = models();
  const auto heads = make_heads(*m.target, 3, false);
  const MedusaTree tree = default_medusa_tree(3);
  const auto plain = generate(*m.target, kThreePrompts, 30, SamplingConfig::greedy());
  const int32_t stop = plain[1][6];
  const SpeculativeResult got = medusa_generate(*m.target, *heads, tree, kThreePrompts, 30, SamplingConfig::greedy(),
                                                {MedusaMode::Greedy}, stop);
  EXPECT_EQ(got.tokens, generate(*m.target, kThreePrompts, 30, SamplingConfig::greedy(), stop));
  const std::string line = got.stats.summary();
  std::printf("%s\n", line.c_str());
  EXPECT_NE(line.find("medusa: tree of 16 nodes, depth 3"), std::string::npos) << line;
  EXPECT_NE(line.find("acceptance per head"), std::string::npos) << line;
  EXPECT_EQ(tree.nodes(), 16);
  EXPECT_EQ(tree.depth(), 3);
  // The default tree: mc_sim_7b_63's first paths within 3 heads, in its order, prefix-closed.
  EXPECT_EQ(format_medusa_choices(default_medusa_tree(2, 5)), "[(0,), (1,), (2,), (0, 0), (0, 1)]");
}

TEST(MedusaSampling, LosslessFollowsPlainSamplingAndTypicalDoesNot) {
  Models& m = models();
  const int64_t V = m.target->config().vocab_size, n = 4000;
  const auto heads = make_heads(*m.target, 3, false);
  const MedusaTree tree = load_medusa_tree("[(0,), (1,), (2,), (0, 0), (1, 0), (0, 1), (0, 0, 0)]", 3, "test");
  for (const bool filtered : {false, true}) {
    SamplingConfig cfg;
    cfg.seed = 3;
    if (filtered) cfg.temperature = 0.8, cfg.top_k = 12, cfg.top_p = 0.9;
    const auto plain = generate(*m.target, rows_of(n), 3, cfg);
    cfg.seed = 4;  // independent of the plain samples
    const SpeculativeResult got = medusa_generate(*m.target, *heads, tree, rows_of(n), 3, cfg, {MedusaMode::Lossless});
    std::string report;
    EXPECT_TRUE(same_distribution(plain, got.tokens, V, report)) << (filtered ? "filtered\n" : "T 1\n") << report;
    std::printf("lossless, %s: %s\n%s", filtered ? "T 0.8, top-k 12, top-p 0.9" : "T 1", got.stats.summary().c_str(),
                report.c_str());
    expect_consistent(got.stats, filtered ? "filtered" : "T 1");
    EXPECT_GT(got.stats.acceptance_rate(), 0.05);  // the candidates were tested and some kept
    EXPECT_LT(got.stats.acceptance_rate(), 0.98);
  }
  // Typical acceptance keeps only tokens above min(ε, δ e^{-H}): with δ = 3 that is most of the
  // vocabulary's tail, and the test sees it.
  SamplingConfig cfg;
  cfg.seed = 3;
  const auto plain = generate(*m.target, rows_of(n), 3, cfg);
  cfg.seed = 4;
  MedusaAcceptance typical{MedusaMode::Typical, 0.09, 3.0};
  const SpeculativeResult got = medusa_generate(*m.target, *heads, tree, rows_of(n), 3, cfg, typical);
  std::string report;
  EXPECT_FALSE(same_distribution(plain, got.tokens, V, report)) << report;
  std::printf("typical (epsilon 0.09, delta 3):\n%s", report.c_str());
}

TEST(MedusaSampling, TypicalCommitsOnlyTokensAboveTheirThreshold) {
  Models& m = models();
  const int64_t V = m.target->config().vocab_size;
  const auto heads = make_heads(*m.target, 3, false);
  const MedusaTree tree = default_medusa_tree(3);
  SamplingConfig cfg;
  cfg.seed = 9, cfg.temperature = 0.7;
  const MedusaAcceptance typical{MedusaMode::Typical, 0.09, 0.3};
  const int max_new = 24;
  const SpeculativeResult got = medusa_generate(*m.target, *heads, tree, kMixedLengths, max_new, cfg, typical);
  std::printf("typical: %s\n", got.stats.summary().c_str());
  expect_consistent(got.stats, "typical");
  EXPECT_GT(got.stats.acceptance_rate(), 0.1);
  // The base's distribution before every committed token, from one plain forward over the text.
  int64_t checked = 0;
  for (size_t r = 0; r < kMixedLengths.size(); ++r) {
    ASSERT_EQ(got.tokens[r].size(), static_cast<size_t>(max_new));
    std::vector<int32_t> text = kMixedLengths[r];
    text.insert(text.end(), got.tokens[r].begin(), got.tokens[r].end());
    const int64_t L = static_cast<int64_t>(text.size()), P = static_cast<int64_t>(kMixedLengths[r].size());
    Cache cache;
    const Tensor logits = host_f32(m.target->forward(Tensor::from_vector(text, {1, L}), cache));
    for (int64_t t = P; t < L; ++t) {
      const std::vector<double> p = sampling_distribution(logits.data<float>() + (t - 1) * V, V, cfg);
      const double threshold = typical_threshold(p.data(), V, typical.epsilon, typical.delta);
      // Accepted candidates have p > threshold; the next token is drawn from p >= threshold
      // (rounding: the verification forward's batch shape differs from this one's).
      EXPECT_GE(p[text[t]], threshold * (1 - 1e-4)) << "row " << r << " token " << t - P;
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int64_t>(kMixedLengths.size()) * max_new);
}

TEST(MedusaCalibration, AccuracyCountsTheHeadsHitsOnTheGreedyText) {
  // With no ResBlock and W2 = the LM head, head k's rank-0 token at t is the base's argmax at t,
  // i.e. greedy token t + 1, while it is scored against token t + k + 2: its accuracy is the share
  // of positions where the greedy text repeats itself k + 1 tokens later.
  Models& m = models();
  const auto heads = make_heads(*m.target, 3, false, /*layers=*/0);
  const int continuation = 20;
  std::vector<int64_t> positions;
  const auto acc = measure_medusa_accuracy(*m.target, *heads, kMixedLengths, continuation, 4, &positions);
  const auto greedy = generate(*m.target, kMixedLengths, continuation, SamplingConfig::greedy());
  ASSERT_EQ(acc.size(), 3u);
  for (int64_t k = 0; k < 3; ++k) {
    int64_t hits = 0, scored = 0;
    for (size_t r = 0; r < kMixedLengths.size(); ++r) {
      std::vector<int32_t> x = kMixedLengths[r];
      x.insert(x.end(), greedy[r].begin(), greedy[r].end());
      const int64_t P = static_cast<int64_t>(kMixedLengths[r].size()), L = static_cast<int64_t>(x.size());
      for (int64_t t = P - 1; t + k + 2 < L; ++t, ++scored) hits += x[t + 1] == x[t + k + 2];
    }
    EXPECT_EQ(positions[k], scored) << "head " << k;
    EXPECT_NEAR(acc[k][0], static_cast<double>(hits) / scored, 1e-12) << "head " << k;
    double total = 0;
    for (double a : acc[k]) total += a;
    EXPECT_LE(total, 1.0 + 1e-12) << "head " << k;  // at most one rank hits
  }
}

TEST(MedusaInput, BadInputIsRefusedBeforeAnyWork) {
  Models& m = models();
  const auto heads = make_heads(*m.target, 3, false);
  const auto greedy = SamplingConfig::greedy();
  // A tree whose paths use a fourth head.
  const MedusaTree deep = load_medusa_tree("[(0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)]", 4, "test");
  std::string e = error_of([&] { medusa_generate(*m.target, *heads, deep, kOnePrompt, 8, greedy); });
  EXPECT_NE(e.find("the model has 3 Medusa heads"), std::string::npos) << e;
  e = error_of([&] { load_medusa_tree("mc_sim_7b_63", 3, "--tree"); });
  EXPECT_NE(e.find("but the model has 3 Medusa heads"), std::string::npos) << e;
  // A tree larger than the cache's headroom: 4 + 30 + 63 - 1 = 96 fits the 96 positions, 31 tokens do not.
  const auto four = make_heads(*m.target, 4, false);
  const MedusaTree big = load_medusa_tree("mc_sim_7b_63", 4, "test");
  e = error_of([&] { medusa_generate(*m.target, *four, big, kOnePrompt, 31, greedy); });
  EXPECT_NE(e.find("the tree has 63 nodes"), std::string::npos) << e;
  EXPECT_NE(e.find("needs 97 slots"), std::string::npos) << e;
  EXPECT_NE(e.find("use a smaller tree"), std::string::npos) << e;
  EXPECT_NE(e.find("lower the new tokens to 30"), std::string::npos) << e;
  EXPECT_EQ(medusa_generate(*m.target, *four, big, kOnePrompt, 30, greedy).tokens,
            generate(*m.target, kOnePrompt, 30, greedy));
  // Typical acceptance at temperature 0; greedy acceptance at temperature 1; bad ε.
  const MedusaTree tree = default_medusa_tree(3);
  e = error_of([&] { medusa_generate(*m.target, *heads, tree, kOnePrompt, 8, greedy, {MedusaMode::Typical}); });
  EXPECT_NE(e.find("typical acceptance samples and needs a temperature > 0"), std::string::npos) << e;
  SamplingConfig t1;
  e = error_of([&] { medusa_generate(*m.target, *heads, tree, kOnePrompt, 8, t1, {MedusaMode::Greedy}); });
  EXPECT_NE(e.find("greedy acceptance decodes at temperature 0"), std::string::npos) << e;
  e = error_of([&] { medusa_generate(*m.target, *heads, tree, kOnePrompt, 8, t1, {MedusaMode::Typical, 0, 0.3}); });
  EXPECT_NE(e.find("epsilon > 0"), std::string::npos) << e;
  e = error_of([&] { parse_medusa_mode("fast", "--medusa-mode"); });
  EXPECT_NE(e.find("--medusa-mode: 'fast' is not a Medusa acceptance mode"), std::string::npos) << e;
  // A sliding-window base (the tree mask has none), and heads of another model.
  const auto mistral = random_model(small_mistral(8));
  const auto mistral_heads = make_heads(*mistral, 2, false);
  e = error_of([&] { medusa_generate(*mistral, *mistral_heads, default_medusa_tree(2), kOnePrompt, 4, greedy); });
  EXPECT_NE(e.find("sliding window of 8"), std::string::npos) << e;
  e = error_of([&] { medusa_generate(*m.target, *mistral_heads, default_medusa_tree(2), kOnePrompt, 4, greedy); });
  EXPECT_NE(e.find("the heads belong to another model"), std::string::npos) << e;
}

}  // namespace
