// Early-exit self-speculative decoding (eval/self_speculative.h) on tiny random models:
//   - greedy output equals greedy generate() token for token for every exit layer and several γ,
//     batches of one and several lengths, rows ending early at a stop token (Llama and GPT-2);
//   - the drafts are those of an independent drafter: the same first E layers built as a model of
//     their own, with a cache of its own, through speculative_generate — same tokens, same
//     acceptance counts at T = 1 (so the shared cache changes nothing but the work done);
//   - after every round the shared cache equals a full recompute of the committed tokens, in every
//     layer (the draft's layers 0 .. E-1 and the verification's E .. L-1 after roll-back);
//   - sampled output follows plain sampling's distribution (two-sample test with power shown);
//   - bad exit layers and gammas are refused before any work.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "eval/self_speculative.h"
#include "tests/spec/spec_models.h"
#include "tests/spec/spec_stats.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

const std::vector<std::vector<int32_t>> kFourPrompts = {{3, 4, 5, 6}, {7, 8, 9, 10}, {11, 12, 13, 14}, {20, 21, 22, 23}};
const std::vector<std::vector<int32_t>> kMixedLengths = {{1, 2, 3}, {4, 5, 6, 7, 8}, {9, 10, 11}, {30}};

// The first `layers` layers of `full` (with its embeddings, final norm and head) as a model of its
// own: the early exit's independent twin.
std::unique_ptr<TransformerLM> first_layers_of(TransformerLM& full, int64_t layers) {
  ModelConfig c = full.config();
  c.num_hidden_layers = layers;
  auto m = std::make_unique<TransformerLM>(c);
  m->init_weights(7);
  for (Param* p : m->params()) p->value.copy_(full.param(p->name).value);
  return m;
}

struct DeepModels {
  std::unique_ptr<TransformerLM> llama = random_model(spec_llama(4));
  std::unique_ptr<TransformerLM> gpt2 = random_model(small_gpt2(3));  // learned positions, 32 of them
};

DeepModels& deep() {
  omp_set_num_threads(1);  // as spec_models.h: calls far too small to share between threads
  static DeepModels m;
  return m;
}

void expect_consistent_counts(const SpeculativeStats& st, int gamma, const std::string& tag) {
  int64_t kept = 0;
  for (int64_t a : st.accepted) kept += a;
  EXPECT_EQ(st.reached[0], st.target_row_forwards) << tag;
  EXPECT_EQ(st.committed, kept + st.target_row_forwards) << tag;
  EXPECT_EQ(st.drafter_calls, (gamma + 1) * st.target_calls) << tag;  // γ + 1 early-exit forwards per round
}

TEST(SelfSpeculativeGreedy, EqualsGreedyGenerateForEveryExitLayer) {
  DeepModels& m = deep();
  const SamplingConfig greedy = SamplingConfig::greedy();
  for (TransformerLM* model : {m.llama.get(), m.gpt2.get()}) {
    const int64_t L = model->config().num_hidden_layers;
    const int max_new = 18;
    for (const auto* prompts : {&kFourPrompts, &kMixedLengths}) {
      const auto want = generate(*model, *prompts, max_new, greedy);
      // A stop token from one row's output ends that row early while the others go on.
      const int32_t stop = want[1][5];
      const auto want_stopped = generate(*model, *prompts, max_new, greedy, stop);
      for (int64_t e = 1; e < L; ++e) {
        for (int gamma : {1, 3, 5}) {
          const std::string tag = "layers " + std::to_string(L) + ", exit " + std::to_string(e) + ", gamma " +
                                  std::to_string(gamma) + ", batch " + std::to_string(prompts->size());
          const SpeculativeResult got = self_speculative_generate(*model, e, *prompts, max_new, greedy, gamma);
          EXPECT_EQ(got.tokens, want) << tag;
          EXPECT_EQ(got.stats.tokens, static_cast<int64_t>(prompts->size()) * max_new) << tag;
          expect_consistent_counts(got.stats, gamma, tag);
          const SpeculativeResult stopped = self_speculative_generate(*model, e, *prompts, max_new, greedy, gamma, stop);
          EXPECT_EQ(stopped.tokens, want_stopped) << tag << ", stop token " << stop;
        }
      }
    }
  }
}

TEST(SelfSpeculativeGreedy, ShortGenerations) {
  DeepModels& m = deep();
  for (int max_new : {0, 1, 2})
    EXPECT_EQ(self_speculative_generate(*m.llama, 2, kMixedLengths, max_new, SamplingConfig::greedy(), 4).tokens,
              generate(*m.llama, kMixedLengths, max_new, SamplingConfig::greedy()))
        << max_new;
}

TEST(SelfSpeculativeSampling, SameTokensAsAStandaloneDrafterOfTheFirstLayers) {
  DeepModels& m = deep();
  SamplingConfig t1;
  t1.seed = 11;
  std::vector<std::vector<int32_t>> prompts = kFourPrompts;
  prompts.insert(prompts.end(), kMixedLengths.begin(), kMixedLengths.end());
  for (int64_t e : {1, 2, 3}) {
    const auto twin = first_layers_of(*m.llama, e);
    LMDrafter drafter(*twin);
    const SpeculativeResult want = speculative_generate(*m.llama, drafter, prompts, 20, t1, 3);
    const SpeculativeResult got = self_speculative_generate(*m.llama, e, prompts, 20, t1, 3);
    EXPECT_EQ(got.tokens, want.tokens) << "exit " << e;
    EXPECT_EQ(got.stats.reached, want.stats.reached) << "exit " << e;
    EXPECT_EQ(got.stats.accepted, want.stats.accepted) << "exit " << e;
    // Both branches of the verifier ran (the test would not see a wrong roll-back otherwise).
    EXPECT_GT(got.stats.acceptance_rate(), 0.05) << "exit " << e;
    EXPECT_LT(got.stats.acceptance_rate(), 0.95) << "exit " << e;
    std::printf("exit %ld: acceptance %.3f, tau %.3f\n", long(e), got.stats.acceptance_rate(), got.stats.tau());
  }
}

// Row b's slots [0, n) of every layer of `got` against `want`'s row 0.
void expect_same_rows(KVCache& got, int64_t b, KVCache& want, int64_t n, const std::string& tag) {
  for (int64_t l = 0; l < got.num_layers(); ++l) {
    for (bool keys : {true, false}) {
      const Tensor g = (keys ? got.layer(l).k : got.layer(l).v).select(0, b).slice(0, 0, n).contiguous();
      const Tensor w = (keys ? want.layer(l).k : want.layer(l).v).select(0, 0).slice(0, 0, n).contiguous();
      double worst = 0;
      for (int64_t i = 0; i < g.numel(); ++i)
        worst = std::max(worst, std::abs(double(g.data<float>()[i]) - double(w.data<float>()[i])));
      // f32 through a few 32-wide layers, computed one token at a time vs all at once.
      EXPECT_LT(worst, 2e-5) << tag << ", layer " << l << (keys ? " keys" : " values");
    }
  }
}

TEST(SelfSpeculativeCache, EqualsAFullRecomputeAfterEveryRound) {
  DeepModels& m = deep();
  TransformerLM& model = *m.llama;
  SamplingConfig t1;
  t1.seed = 5;
  const int gamma = 3;
  const std::vector<std::vector<int32_t>> prompts = {{3, 4, 5, 6}, {7, 8, 9, 10}, {11, 12, 13, 14}};
  SpeculativeStats stats;
  stats.reached.assign(gamma, 0);
  stats.accepted.assign(gamma, 0);
  SelfSpeculativeBatch batch(model, 2, gamma, t1, prompts, {0, 1, 2}, 60, stats);
  std::vector<bool> active(3, true);
  int partial = 0;  // rounds of a row that kept some but not all drafts, or none
  for (uint32_t round = 0; round < 8; ++round) {
    if (round == 4) active[1] = false;  // row 1 finishes: it rides along from slot 0 from now on
    const auto committed = batch.step(round, active);
    for (int64_t b = 0; b < 3; ++b) {
      if (!active[b]) {
        EXPECT_TRUE(committed[b].empty());
        continue;
      }
      if (committed[b].size() < static_cast<size_t>(gamma + 1)) ++partial;
      const std::vector<int32_t>& seq = batch.committed(b);
      const int64_t n = static_cast<int64_t>(seq.size()) - 1;
      ASSERT_EQ(batch.cache().row_length(b), n) << "round " << round << ", row " << b;
      KVCache want(model.config(), 1, 60);
      model.forward_cached(Tensor::from_vector(std::vector<int32_t>(seq.begin(), seq.end() - 1), {1, n}), want);
      expect_same_rows(batch.cache(), b, want, n, "round " + std::to_string(round) + ", row " + std::to_string(b));
    }
  }
  EXPECT_GT(partial, 3);  // roll-backs happened
  EXPECT_GT(stats.acceptance_rate(), 0.05);
}

TEST(SelfSpeculativeSampling, FirstThreeTokensMatchPlainSamplingAtT1) {
  TransformerLM& target = *models().target;  // 2 layers: exit after the first
  const int64_t V = target.config().vocab_size, n = 6000;
  SamplingConfig t1;
  t1.seed = 3;
  const auto plain = generate(target, rows_of(n), 3, t1);
  t1.seed = 4;  // independent of the plain samples
  for (int gamma : {1, 2}) {
    const SpeculativeResult spec = self_speculative_generate(target, 1, rows_of(n), 3, t1, gamma);
    std::string report;
    EXPECT_TRUE(same_distribution(plain, spec.tokens, V, report)) << "gamma " << gamma << "\n" << report;
    std::printf("gamma %d, acceptance %.3f\n%s", gamma, spec.stats.acceptance_rate(), report.c_str());
    EXPECT_GT(spec.stats.acceptance_rate(), 0.05);
    EXPECT_LT(spec.stats.acceptance_rate(), 0.98);
  }
  // The test has power here: the early exit's own samples (what an unverified draft would emit) fail it.
  const auto exit_model = first_layers_of(target, 1);
  t1.seed = 5;
  std::string report;
  EXPECT_FALSE(same_distribution(plain, generate(*exit_model, rows_of(n), 3, t1), V, report)) << report;
}

TEST(SelfSpeculativeInput, BadExitLayersAndGammasAreRefused) {
  DeepModels& m = deep();
  const auto greedy = SamplingConfig::greedy();
  const std::vector<std::vector<int32_t>> one = {{1, 2, 3}};
  const std::string zero = error_of([&] { self_speculative_generate(*m.llama, 0, one, 4, greedy, 2); });
  EXPECT_NE(zero.find("exit layer 0 is outside [1, 3]"), std::string::npos) << zero;
  const std::string all = error_of([&] { self_speculative_generate(*m.llama, 4, one, 4, greedy, 2); });
  EXPECT_NE(all.find("exit layer 4 is outside [1, 3]"), std::string::npos) << all;
  const std::string gamma = error_of([&] { self_speculative_generate(*m.llama, 2, one, 4, greedy, 0); });
  EXPECT_NE(gamma.find("gamma 0"), std::string::npos) << gamma;
  const auto single = random_model(spec_llama(1));
  const std::string shallow = error_of([&] { self_speculative_generate(*single, 1, one, 4, greedy, 2); });
  EXPECT_NE(shallow.find("needs a model of 2 or more layers"), std::string::npos) << shallow;
  // 3 + 94 + 2 - 1 = 98 positions > 96.
  const std::string room = error_of([&] { self_speculative_generate(*m.llama, 2, one, 94, greedy, 2); });
  EXPECT_NE(room.find("98 positions"), std::string::npos) << room;
  EXPECT_NE(error_of([&] { self_speculative_generate(*m.llama, 2, {{1, 99}}, 4, greedy, 2); }).find("outside the vocabulary"),
            std::string::npos);
  // The model's own early-exit forward refuses a layer count it does not have.
  KVCache kv(m.llama->config(), 1, 8);
  const std::string model_error =
      error_of([&] { m.llama->forward_cached_hidden(Tensor::from_vector(std::vector<int32_t>{1}, {1, 1}), kv, nullptr, 5); });
  EXPECT_NE(model_error.find("exit_layer = 5 is outside [1, 4]"), std::string::npos) << model_error;
}

}  // namespace
