// EagleChainDrafter (eval/eagle_chain_drafter.h; issue 14, label spec):
//   - every round's draft distributions equal the training forward's: q of draft position i + 1
//     is the softmax of training-time-test step i at the anchor column, with the window being
//     the committed tokens and the drafts, over rounds in which two rows accept different
//     counts (per-row roll-back of the drafter's cache and its features);
//   - greedy speculative decoding with the EAGLE drafter equals greedy generate() token for token
//     (batch 1 and 4), and a one-token prompt is refused.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>

#include "eval/eagle_chain_drafter.h"
#include "eval/speculative.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

struct Models {
  std::unique_ptr<TransformerLM> target;
  std::unique_ptr<EagleDrafter> drafter;
  Models() {
    omp_set_num_threads(1);  // tiny calls: one thread keeps the tests fast on a busy machine
    target = std::make_unique<TransformerLM>(spec_llama(4));
    target->init_weights(7);
    randomize_params(target->params());
    drafter = std::make_unique<EagleDrafter>(*target, EagleDrafter::default_layers(4));
    drafter->init_weights(8);
    randomize_params(drafter->own_params());
  }
};

Models& models() {
  static Models m;
  return m;
}

std::vector<double> softmax_row(const float* z, int64_t V) {
  double mx = -INFINITY, sum = 0;
  for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(z[v]));
  std::vector<double> p(V);
  for (int64_t v = 0; v < V; ++v) sum += p[v] = std::exp(z[v] - mx);
  for (double& x : p) x /= sum;
  return p;
}

}  // namespace

TEST(EagleDecoding, DraftsAreTheTrainingForwardsStepsAtTheAnchor) {
  Models& m = models();
  TransformerLM& target = *m.target;
  const int64_t V = 48, B = 2;
  const int gamma = 3;
  SamplingConfig cfg;  // T = 1: full distributions to compare
  cfg.seed = 5;
  std::vector<std::vector<int32_t>> seq = {{1, 5, 9, 2, 7}, {3, 4, 8, 6, 11}};
  const int64_t P = 5, max_len = 60;
  EagleChainDrafter drafter(*m.drafter);
  KVCache kv(target.config(), B, max_len, target.device(), target.compute_dtype());
  {
    Tensor ids = Tensor::empty({B, P - 1}, DType::I32);
    for (int64_t b = 0; b < B; ++b) std::copy(seq[b].begin(), seq[b].end() - 1, ids.data<int32_t>() + b * (P - 1));
    target.forward_cached(ids, kv, true, drafter.target_taps());
  }
  DraftSetup setup;
  setup.prompts = seq;
  setup.sequences = {0, 1};
  setup.gamma = gamma;
  setup.max_len = max_len;
  setup.sampling = cfg;
  drafter.begin(setup);
  const std::vector<bool> active(B, true);
  double worst = 0;
  for (uint32_t round = 0; round < 6; ++round) {
    const DraftBlock block = drafter.propose(round, active);
    for (int64_t b = 0; b < B; ++b) {
      // The training window: the committed tokens, then drafts x_1 .. x_{gamma-1}.
      std::vector<int32_t> window = seq[b];
      for (int i = 0; i + 1 < gamma; ++i) window.push_back(block.tokens[b * gamma + i]);
      const int64_t T = static_cast<int64_t>(window.size()), anchor = static_cast<int64_t>(seq[b].size()) - 2;
      const Tensor ids = Tensor::from_vector(window, {1, T});
      Cache trunk, c, head;
      HiddenTaps taps;
      taps.layers = m.drafter->layers();
      target.forward_hidden(ids, trunk, &taps);
      const Tensor normed = m.drafter->forward_train(ids, taps.states, gamma, c);
      const Tensor logits = m.drafter->body().forward_head(normed, head).contiguous();
      for (int i = 0; i < gamma; ++i) {
        const std::vector<double> want = softmax_row(logits.data<float>() + (i * T + anchor) * V, V);
        for (int64_t v = 0; v < V; ++v)
          worst = std::max(worst, std::fabs(block.q[(b * gamma + i) * V + v] - want[v]));
      }
    }
    // The verification: the target feeds each row's last committed token and its drafts; rows
    // keep different counts (0 .. gamma) and commit a chosen next token.
    Tensor ids = Tensor::empty({B, gamma + 1}, DType::I32);
    for (int64_t b = 0; b < B; ++b) {
      ids.data<int32_t>()[b * (gamma + 1)] = seq[b].back();
      for (int i = 0; i < gamma; ++i) ids.data<int32_t>()[b * (gamma + 1) + 1 + i] = block.tokens[b * gamma + i];
    }
    target.forward_cached(ids, kv, false, drafter.target_taps());
    std::vector<int> accepted = {static_cast<int>(round % (gamma + 1)), static_cast<int>((round + 2) % (gamma + 1))};
    std::vector<int32_t> next = {static_cast<int32_t>((round * 7 + 1) % V), static_cast<int32_t>((round * 5 + 3) % V)};
    drafter.commit(active, accepted, next);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t length = static_cast<int64_t>(seq[b].size());
      kv.truncate(b, length + accepted[b]);
      for (int i = 0; i < accepted[b]; ++i) seq[b].push_back(block.tokens[b * gamma + i]);
      seq[b].push_back(next[b]);
    }
  }
  // Probabilities from two f32 paths (cached one-query-at-a-time vs the packed training forward).
  EXPECT_LT(worst, 1e-4);
}

TEST(EagleDecoding, GreedyEqualsGreedyGenerateTokenForToken) {
  Models& m = models();
  const std::vector<std::vector<int32_t>> one = {{1, 5, 9, 2}};
  const std::vector<std::vector<int32_t>> four = {{3, 4, 5, 6}, {7, 8, 9, 10}, {11, 12, 13, 14}, {20, 21, 22, 23}};
  const int max_new = 21;
  for (const auto* prompts : {&one, &four}) {
    const auto want = generate(*m.target, *prompts, max_new, SamplingConfig::greedy());
    for (int gamma : {1, 3, 5}) {
      EagleChainDrafter drafter(*m.drafter);
      const SpeculativeResult got =
          speculative_generate(*m.target, drafter, *prompts, max_new, SamplingConfig::greedy(), gamma);
      EXPECT_EQ(got.tokens, want) << "batch " << prompts->size() << ", gamma " << gamma;
      EXPECT_EQ(got.stats.drafter_calls, gamma * got.stats.target_calls);
    }
  }
}

TEST(EagleDecoding, AOneTokenPromptIsRefused) {
  Models& m = models();
  EagleChainDrafter drafter(*m.drafter);
  try {
    speculative_generate(*m.target, drafter, {{4}}, 5, SamplingConfig::greedy(), 3);
    FAIL() << "a one-token prompt was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at least 2 tokens"), std::string::npos) << e.what();
  }
}
