// tree_speculative_generate end to end on tiny random models: greedy output equals greedy
// generate() token for token (batch 1 and 4, prompts of different lengths, drafters that agree
// rarely, partly and always, several tree shapes); width 1 gives the chain decoder's tokens at
// T > 0 with the same seed; at T = 1 with top-k / top-p the first three tokens follow plain
// sampling (two-sample test); a tree larger than the cache is refused before any work.
#include <gtest/gtest.h>

#include <cstdio>

#include "eval/speculative.h"
#include "eval/tree_speculative.h"
#include "tests/spec/spec_models.h"
#include "tests/spec/spec_stats.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

const std::vector<std::vector<int32_t>> kOnePrompt = {{1, 5, 9, 2}};
const std::vector<std::vector<int32_t>> kFourPrompts = {{3, 4, 5, 6}, {7, 8, 9, 10}, {11, 12, 13, 14}, {20, 21, 22, 23}};
const std::vector<std::vector<int32_t>> kMixedLengths = {{1, 2, 3}, {4, 5, 6, 7, 8}, {9, 10, 11}, {30}};

struct Shape {
  int width, depth;
};

TEST(TreeGreedy, EqualsGreedyGenerateTokenForToken) {
  Models& m = models();
  const int max_new = 21;
  for (const auto* prompts : {&kOnePrompt, &kFourPrompts, &kMixedLengths}) {
    const auto want = generate(*m.target, *prompts, max_new, SamplingConfig::greedy());
    for (TransformerLM* draft : {m.small.get(), m.near.get(), m.same.get()}) {
      for (const Shape s : {Shape{2, 3}, Shape{3, 2}, Shape{1, 4}}) {
        LMTreeDrafter drafter(*draft);
        const SpeculativeResult got = tree_speculative_generate(*m.target, drafter, *prompts, max_new,
                                                                SamplingConfig::greedy(), s.width, s.depth);
        const std::string tag = "batch " + std::to_string(prompts->size()) + ", width " + std::to_string(s.width) +
                                ", depth " + std::to_string(s.depth) + ", drafter " +
                                (draft == m.small.get() ? "small" : draft == m.near.get() ? "near" : "same");
        EXPECT_EQ(got.tokens, want) << tag;
        EXPECT_EQ(got.stats.tokens, static_cast<int64_t>(prompts->size()) * max_new) << tag;
        if (draft == m.same.get()) EXPECT_EQ(got.stats.tau(), s.depth + 1.0) << tag;  // every level accepted
      }
    }
  }
}

TEST(TreeGreedy, WiderTreesAcceptMoreAndCountsAgree) {
  Models& m = models();
  LMTreeDrafter chain_like(*m.near), wide(*m.near);
  const auto narrow = tree_speculative_generate(*m.target, chain_like, kFourPrompts, 30, SamplingConfig::greedy(), 1, 3);
  const auto got = tree_speculative_generate(*m.target, wide, kFourPrompts, 30, SamplingConfig::greedy(), 3, 3);
  std::printf("%s\n%s\n", narrow.stats.summary().c_str(), got.stats.summary().c_str());
  // Partial agreement: rows kept paths of different lengths; extra siblings only add chances.
  EXPECT_GT(got.stats.acceptance_rate(), 0.2);
  EXPECT_LT(got.stats.acceptance_rate(), 1.0);
  EXPECT_GE(got.stats.acceptance_at(0), narrow.stats.acceptance_at(0));
  const SpeculativeStats& st = got.stats;
  int64_t kept = 0;
  for (int64_t a : st.accepted) kept += a;
  EXPECT_EQ(st.reached[0], st.target_row_forwards);
  EXPECT_EQ(st.committed, kept + st.target_row_forwards);
  for (int i = 1; i < 3; ++i) EXPECT_EQ(st.reached[i], st.accepted[i - 1]);
  EXPECT_EQ(st.tree_width, 3);
  // A stop token ends its row early, as in generate().
  const auto plain = generate(*m.target, kFourPrompts, 30, SamplingConfig::greedy());
  const int32_t stop = plain[1][6];
  LMTreeDrafter again(*m.near);
  EXPECT_EQ(tree_speculative_generate(*m.target, again, kFourPrompts, 30, SamplingConfig::greedy(), 3, 3, stop).tokens,
            generate(*m.target, kFourPrompts, 30, SamplingConfig::greedy(), stop));
}

TEST(TreeSampling, WidthOneGivesTheChainDecodersTokens) {
  // Same seed, same uniforms, same draws: the tree of width 1 is the chain (eval/speculative_tree.h).
  Models& m = models();
  SamplingConfig cfg;
  cfg.seed = 11, cfg.temperature = 0.9, cfg.top_k = 20;
  for (int depth : {1, 3}) {
    LMDrafter chain_drafter(*m.near);
    LMTreeDrafter tree_drafter(*m.near);
    const auto chain = speculative_generate(*m.target, chain_drafter, kMixedLengths, 25, cfg, depth);
    const auto tree = tree_speculative_generate(*m.target, tree_drafter, kMixedLengths, 25, cfg, 1, depth);
    EXPECT_EQ(tree.tokens, chain.tokens) << "depth " << depth;
    EXPECT_EQ(tree.stats.committed, chain.stats.committed) << "depth " << depth;
  }
}

TEST(TreeSampling, FirstThreeTokensMatchPlainSampling) {
  Models& m = models();
  const int64_t V = m.target->config().vocab_size, n = 4000;
  std::string report;
  for (const bool filtered : {false, true}) {
    SamplingConfig cfg;
    cfg.seed = 3;
    if (filtered) cfg.temperature = 0.8, cfg.top_k = 12, cfg.top_p = 0.9;
    const auto plain = generate(*m.target, rows_of(n), 3, cfg);
    cfg.seed = 4;  // independent of the plain samples
    LMTreeDrafter drafter(*m.near);
    const auto tree = tree_speculative_generate(*m.target, drafter, rows_of(n), 3, cfg, 3, 2);
    report.clear();
    EXPECT_TRUE(same_distribution(plain, tree.tokens, V, report)) << (filtered ? "filtered\n" : "T 1\n") << report;
    std::printf("%s: %s\n%s", filtered ? "T 0.8, top-k 12, top-p 0.9" : "T 1", tree.stats.summary().c_str(),
                report.c_str());
    EXPECT_GT(tree.stats.acceptance_rate(), 0.05);
    EXPECT_LT(tree.stats.acceptance_rate(), 0.98);
  }
}

// A tree drafter that draws from its model's q but reports the uniform distribution: the verifier
// then accepts with the wrong ratio and resamples from the wrong residuals.
class MisreportingTreeDrafter : public TreeDrafter {
 public:
  explicit MisreportingTreeDrafter(TransformerLM& model) : inner_(model) {}
  int64_t vocab_size() const override { return inner_.vocab_size(); }
  int64_t max_positions() const override { return inner_.max_positions(); }
  void begin(const DraftSetup& s, const DraftTree& t) override { inner_.begin(s, t); }
  TreeBlock propose(uint32_t round, const std::vector<bool>& active) override {
    TreeBlock b = inner_.propose(round, active);
    std::fill(b.q.begin(), b.q.end(), 1.0 / static_cast<double>(b.vocab));
    return b;
  }
  void commit(const std::vector<bool>& a, const std::vector<std::vector<int32_t>>& paths,
              const std::vector<int32_t>& next) override {
    inner_.commit(a, paths, next);
  }

 private:
  LMTreeDrafter inner_;
};

TEST(TreeSampling, TheTwoSampleTestCatchesAMisreportedQ) {
  Models& m = models();
  const int64_t V = m.target->config().vocab_size, n = 4000;
  SamplingConfig cfg;
  cfg.seed = 3;
  const auto plain = generate(*m.target, rows_of(n), 3, cfg);
  cfg.seed = 5;
  MisreportingTreeDrafter liar(*m.small);
  std::string report;
  EXPECT_FALSE(same_distribution(plain, tree_speculative_generate(*m.target, liar, rows_of(n), 3, cfg, 3, 2).tokens, V,
                                 report)) << report;
  std::printf("a misreported q:\n%s", report.c_str());
}

// A tree drafter that only answers the checks and records whether decoding began.
class SpyTreeDrafter : public TreeDrafter {
 public:
  SpyTreeDrafter(int64_t vocab, int64_t positions) : vocab_(vocab), positions_(positions) {}
  int64_t vocab_size() const override { return vocab_; }
  int64_t max_positions() const override { return positions_; }
  void begin(const DraftSetup&, const DraftTree&) override { began = true; }
  TreeBlock propose(uint32_t, const std::vector<bool>&) override { return {}; }
  void commit(const std::vector<bool>&, const std::vector<std::vector<int32_t>>&,
              const std::vector<int32_t>&) override {}
  bool began = false;

 private:
  int64_t vocab_, positions_;
};

TEST(TreeInput, ATreeLargerThanTheCacheIsRefusedBeforeAnyWork) {
  Models& m = models();
  const auto greedy = SamplingConfig::greedy();
  SpyTreeDrafter spy(48, 96);
  // Width 4, depth 3: 84 nodes; 4 + 10 + 84 - 1 = 97 slots > 96 positions.
  const std::string big = error_of([&] { tree_speculative_generate(*m.target, spy, kOnePrompt, 10, greedy, 4, 3); });
  EXPECT_NE(big.find("has 84 nodes"), std::string::npos) << big;
  EXPECT_NE(big.find("needs 97 slots"), std::string::npos) << big;
  EXPECT_NE(big.find("lower the tree's width or depth"), std::string::npos) << big;
  const std::string shape = error_of([&] { tree_speculative_generate(*m.target, spy, kOnePrompt, 10, greedy, 0, 3); });
  EXPECT_NE(shape.find("width and depth must be >= 1"), std::string::npos) << shape;
  SpyTreeDrafter other_vocab(40, 96);
  EXPECT_NE(error_of([&] { tree_speculative_generate(*m.target, other_vocab, kOnePrompt, 8, greedy, 2, 2); })
                .find("vocabulary has 40 tokens"),
            std::string::npos);
  EXPECT_FALSE(spy.began || other_vocab.began);
  // A sliding window (the tree mask has none): the target at the check, a drafter at construction.
  const auto mistral = random_model(small_mistral(8));
  SpyTreeDrafter spy132(132, 32);
  const std::string window = error_of([&] { tree_speculative_generate(*mistral, spy132, kOnePrompt, 4, greedy, 2, 2); });
  EXPECT_NE(window.find("sliding window of 8"), std::string::npos) << window;
  EXPECT_FALSE(spy132.began);
  EXPECT_NE(error_of([&] { LMTreeDrafter d(*mistral); }).find("sliding window"), std::string::npos);
  // At the limit it runs: 4 + 9 + 84 - 1 = 96.
  LMTreeDrafter drafter(*m.near);
  EXPECT_EQ(tree_speculative_generate(*m.target, drafter, kOnePrompt, 9, greedy, 4, 3).tokens,
            generate(*m.target, kOnePrompt, 9, greedy));
}

}  // namespace
