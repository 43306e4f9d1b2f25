// speculative_generate end to end on tiny random models: greedy output equals greedy generate()
// token for token (batch 1 and 4, prompts of different content and length, drafters that agree
// with the target rarely, partly and always); at T = 1 the first three tokens follow the same
// distribution as plain sampling (a two-sample test whose power is shown on wrong samplers);
// bad input is refused before any work.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdio>

#include "eval/speculative.h"
#include "tests/spec/spec_models.h"
#include "tests/spec/spec_stats.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

const std::vector<std::vector<int32_t>> kOnePrompt = {{1, 5, 9, 2}};
const std::vector<std::vector<int32_t>> kFourPrompts = {{3, 4, 5, 6}, {7, 8, 9, 10}, {11, 12, 13, 14}, {20, 21, 22, 23}};
const std::vector<std::vector<int32_t>> kMixedLengths = {{1, 2, 3}, {4, 5, 6, 7, 8}, {9, 10, 11}, {30}};

TEST(SpeculativeGreedy, EqualsGreedyGenerateTokenForToken) {
  Models& m = models();
  const int max_new = 21;
  for (const auto* prompts : {&kOnePrompt, &kFourPrompts, &kMixedLengths}) {
    const auto want = generate(*m.target, *prompts, max_new, SamplingConfig::greedy());
    for (TransformerLM* draft : {m.small.get(), m.near.get(), m.same.get()}) {
      for (int gamma : {1, 3, 5}) {
        LMDrafter drafter(*draft);
        const SpeculativeResult got =
            speculative_generate(*m.target, drafter, *prompts, max_new, SamplingConfig::greedy(), gamma);
        const std::string tag = "batch " + std::to_string(prompts->size()) + ", gamma " + std::to_string(gamma) +
                                ", drafter " + (draft == m.small.get() ? "small" : draft == m.near.get() ? "near" : "same");
        EXPECT_EQ(got.tokens, want) << tag;
        EXPECT_EQ(got.stats.tokens, static_cast<int64_t>(prompts->size()) * max_new) << tag;
        if (draft == m.same.get()) {  // a copy of the target accepts every draft
          EXPECT_EQ(got.stats.tau(), gamma + 1.0) << tag;
          for (int i = 0; i < gamma; ++i) EXPECT_EQ(got.stats.acceptance_at(i), 1.0) << tag << " position " << i;
        }
      }
    }
  }
}

TEST(SpeculativeGreedy, GenerationsShorterThanOneRound) {
  // γ drafts beyond max_new_tokens are verified but not returned; 0 new tokens returns empty rows.
  Models& m = models();
  for (int max_new : {0, 1, 2}) {
    LMDrafter drafter(*m.same);
    const auto got = speculative_generate(*m.target, drafter, kMixedLengths, max_new, SamplingConfig::greedy(), 5);
    EXPECT_EQ(got.tokens, generate(*m.target, kMixedLengths, max_new, SamplingConfig::greedy())) << max_new;
  }
}

TEST(SpeculativeGreedy, RowsAcceptDifferentlyAndStopTokensEndRows) {
  Models& m = models();
  LMDrafter drafter(*m.near);
  const auto got = speculative_generate(*m.target, drafter, kFourPrompts, 30, SamplingConfig::greedy(), 4);
  // Partial agreement: both the accept and the reject branches ran, so rows rolled back differently.
  EXPECT_GT(got.stats.acceptance_rate(), 0.2);
  EXPECT_LT(got.stats.acceptance_rate(), 0.95);
  EXPECT_GT(got.stats.tau(), 1.0);
  // The counts agree with each other: every verification tests position 1 and commits its
  // accepted drafts plus one token; the LM drafter runs γ forwards per round.
  const SpeculativeStats& st = got.stats;
  int64_t kept = 0;
  for (int64_t a : st.accepted) kept += a;
  EXPECT_EQ(st.reached[0], st.target_row_forwards);
  EXPECT_EQ(st.committed, kept + st.target_row_forwards);
  EXPECT_EQ(st.drafter_calls, 4 * st.target_calls);
  EXPECT_EQ(st.tokens, 4 * 30);
  EXPECT_GE(st.committed, st.tokens);  // the last round may commit past max_new_tokens
  for (int i = 1; i < 4; ++i) EXPECT_EQ(st.reached[i], st.accepted[i - 1]);  // reached i = kept i - 1
  // A stop token taken from one row's greedy output ends that row early, as in generate().
  const auto plain = generate(*m.target, kFourPrompts, 30, SamplingConfig::greedy());
  const int32_t stop = plain[1][6];
  const auto want = generate(*m.target, kFourPrompts, 30, SamplingConfig::greedy(), stop);
  LMDrafter again(*m.near);
  const auto stopped = speculative_generate(*m.target, again, kFourPrompts, 30, SamplingConfig::greedy(), 4, stop);
  EXPECT_EQ(stopped.tokens, want);
  EXPECT_LE(stopped.tokens[1].size(), 7u);
}

// A drafter that draws from its model's q but reports the uniform distribution: the verifier
// then accepts with the wrong ratio and resamples from the wrong residual.
class MisreportingDrafter : public Drafter {
 public:
  explicit MisreportingDrafter(TransformerLM& model) : inner_(model) {}
  int64_t vocab_size() const override { return inner_.vocab_size(); }
  int64_t max_positions() const override { return inner_.max_positions(); }
  void begin(const DraftSetup& s) override { inner_.begin(s); }
  DraftBlock propose(uint32_t round, const std::vector<bool>& active) override {
    DraftBlock b = inner_.propose(round, active);
    std::fill(b.q.begin(), b.q.end(), 1.0 / static_cast<double>(b.vocab));
    return b;
  }
  void commit(const std::vector<bool>& a, const std::vector<int>& n, const std::vector<int32_t>& x) override {
    inner_.commit(a, n, x);
  }

 private:
  LMDrafter inner_;
};

TEST(SpeculativeSampling, FirstThreeTokensMatchPlainSamplingAtT1) {
  Models& m = models();
  const int64_t V = m.target->config().vocab_size, n = 6000;
  SamplingConfig t1;
  t1.seed = 3;
  const auto plain = generate(*m.target, rows_of(n), 3, t1);
  SamplingConfig other = t1;
  other.seed = 4;  // independent of the plain samples
  std::string report;
  // γ = 1 commits the three tokens over several rounds; γ = 2 commits them within and across rounds.
  for (const auto& [draft, gamma] : {std::pair<TransformerLM*, int>{m.near.get(), 2}, {m.small.get(), 1}}) {
    {
      LMDrafter drafter(*draft);
      const auto spec = speculative_generate(*m.target, drafter, rows_of(n), 3, other, gamma);
      report.clear();
      EXPECT_TRUE(same_distribution(plain, spec.tokens, V, report)) << "gamma " << gamma << "\n" << report;
      std::printf("gamma %d, acceptance %.3f\n%s", gamma, spec.stats.acceptance_rate(), report.c_str());
      EXPECT_GT(spec.stats.acceptance_rate(), 0.05);
      EXPECT_LT(spec.stats.acceptance_rate(), 0.98);
    }
  }
  // The same with temperature, top-k and top-p applied to p and q alike.
  SamplingConfig filtered = t1;
  filtered.temperature = 0.8, filtered.top_k = 12, filtered.top_p = 0.9;
  const auto plain_filtered = generate(*m.target, rows_of(n), 3, filtered);
  filtered.seed = 4;
  LMDrafter drafter(*m.small);
  const auto spec_filtered = speculative_generate(*m.target, drafter, rows_of(n), 3, filtered, 2);
  report.clear();
  EXPECT_TRUE(same_distribution(plain_filtered, spec_filtered.tokens, V, report)) << "filtered\n" << report;
  std::printf("T 0.8, top-k 12, top-p 0.9: acceptance %.3f\n%s", spec_filtered.stats.acceptance_rate(),
              report.c_str());
  // The test has power: a sampler that accepts every draft (the drafter's own samples) and one
  // that verifies against a misreported q both fail it.
  SamplingConfig third = t1;
  third.seed = 5;
  report.clear();
  EXPECT_FALSE(same_distribution(plain, generate(*m.near, rows_of(n), 3, third), V, report)) << report;
  std::printf("the drafter's own samples:\n%s", report.c_str());
  MisreportingDrafter liar(*m.small);
  report.clear();
  EXPECT_FALSE(same_distribution(plain, speculative_generate(*m.target, liar, rows_of(n), 3, third, 2).tokens, V,
                                 report)) << report;
  std::printf("a misreported q:\n%s", report.c_str());
}

// A drafter that only answers the checks and records whether decoding began.
class SpyDrafter : public Drafter {
 public:
  SpyDrafter(int64_t vocab, int64_t positions) : vocab_(vocab), positions_(positions) {}
  int64_t vocab_size() const override { return vocab_; }
  int64_t max_positions() const override { return positions_; }
  void begin(const DraftSetup&) override { began = true; }
  DraftBlock propose(uint32_t, const std::vector<bool>&) override { return {}; }
  void commit(const std::vector<bool>&, const std::vector<int>&, const std::vector<int32_t>&) override {}
  bool began = false;

 private:
  int64_t vocab_, positions_;
};

TEST(SpeculativeInput, BadInputIsRefusedBeforeAnyWork) {
  Models& m = models();
  const auto greedy = SamplingConfig::greedy();
  SpyDrafter ok(48, 96);
  EXPECT_NE(error_of([&] { speculative_generate(*m.target, ok, kOnePrompt, 8, greedy, 0); }).find("gamma"),
            std::string::npos);
  SpyDrafter other_vocab(40, 96);
  const std::string vocab_error =
      error_of([&] { speculative_generate(*m.target, other_vocab, kOnePrompt, 8, greedy, 4); });
  EXPECT_NE(vocab_error.find("vocabulary has 40 tokens but the target's has 48"), std::string::npos) << vocab_error;
  // 4 + 90 + 4 - 1 = 97 positions > 96 (the target); a drafter with fewer positions is named.
  EXPECT_NE(error_of([&] { speculative_generate(*m.target, ok, kOnePrompt, 90, greedy, 4); }).find("97 positions"),
            std::string::npos);
  SpyDrafter short_drafter(48, 32);
  const std::string room_error =
      error_of([&] { speculative_generate(*m.target, short_drafter, kOnePrompt, 40, greedy, 4); });
  EXPECT_NE(room_error.find("drafter"), std::string::npos) << room_error;
  EXPECT_FALSE(ok.began || other_vocab.began || short_drafter.began);
  // At the limit it runs: 4 + 89 + 4 - 1 = 96.
  LMDrafter drafter(*m.near);
  EXPECT_EQ(speculative_generate(*m.target, drafter, kOnePrompt, 89, greedy, 4).tokens[0].size(), 89u);
}

}  // namespace
