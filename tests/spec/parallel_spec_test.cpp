// ParallelSpec decoding (models/mask_embedding.h, eval/parallel_spec_drafter.h) on tiny random
// models: the mask tokens embed through their own table (checked against a model whose token
// table holds the mask rows) and leave real ids bitwise untouched; each proposal's q equals the
// drafter's plain forward over [committed tokens, masks]; greedy speculative output equals greedy
// generate() token for token (batch 1 and 4) with one drafter forward per round; at T = 1 the
// first three tokens follow plain sampling's distribution (two-sample test); bad input is refused.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdio>

#include "eval/parallel_spec_drafter.h"
#include "eval/speculative.h"
#include "kernels/elementwise.h"
#include "models/step_context.h"
#include "tests/spec/spec_stats.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr int64_t kMasks = 4;

std::unique_ptr<TransformerLM> random_model(const ModelConfig& c, int64_t masks) {
  auto m = std::make_unique<TransformerLM>(c);
  m->init_weights(7);
  if (masks > 0) m->add_mask_embeddings(masks, 7);
  randomize_params(m->params());  // the same weights for the same config (streams named after params)
  return m;
}

// A model with `from`'s weights (same config), plus `masks` random mask tokens when > 0.
std::unique_ptr<TransformerLM> copy_of(TransformerLM& from, int64_t masks) {
  auto m = random_model(from.config(), masks);
  for (Param* p : from.params())
    if (p->name != kMaskEmbeddingName) m->param(p->name).value.copy_(p->value);
  return m;
}

Tensor logits_of(TransformerLM& model, const std::vector<int32_t>& ids) {
  Cache c;
  return model.forward(Tensor::from_vector(ids, {1, static_cast<int64_t>(ids.size())}), c).clone();
}

void single_thread() { omp_set_num_threads(1); }  // tiny per-row calls: threads only cost here

}  // namespace

TEST(MaskEmbedding, RealIdsEmbedBitwiseAsWithoutMasks) {
  auto plain = random_model(spec_llama(2), 0);
  auto masked = copy_of(*plain, kMasks);
  const Tensor ids = random_ids({2, 11}, 48, 3);
  Cache a, b;
  EXPECT_EQ(max_abs_diff(plain->forward(ids, a), masked->forward(ids, b)), 0.0);
  KVCache ka(plain->config(), 2, 11), kb(masked->config(), 2, 11);
  EXPECT_EQ(max_abs_diff(plain->forward_cached(ids, ka), masked->forward_cached(ids, kb)), 0.0);
  EXPECT_EQ(masked->mask_tokens(), kMasks);
  EXPECT_EQ(masked->mask_token_id(2), 50);
  EXPECT_NE(error_of([&] { masked->mask_token_id(4); }).find("does not exist"), std::string::npos);
}

TEST(MaskEmbedding, MaskIdsReadAndTrainTheMaskTable) {
  // Reference: the same model without masks whose token rows u_i (ids absent from the input)
  // hold the mask rows — its forward and its gradient of row u_i must be the masked model's.
  auto masked = random_model(spec_llama(2), kMasks);
  auto reference = copy_of(*masked, 0);
  const std::vector<int32_t> stand_in = {44, 45, 46, 47};
  const Tensor table = masked->param(kMaskEmbeddingName).value;
  Tensor& wte = reference->param("model.embed_tokens.weight").value;
  for (int64_t i = 0; i < kMasks; ++i) wte.select(0, stand_in[i]).copy_(table.select(0, i));
  // Two rows: 9 real tokens (ids < 44), then the masks of anchors 6 and 2.
  const int64_t B = 2, n = 9, T = n + 2 * kMasks;
  Tensor ids = random_ids({B, T}, 44, 5), stand_ids = ids.clone();
  Tensor groups = Tensor::full({B, T}, -1, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = n; s < T; ++s) {
      const int64_t i = (s - n) % kMasks;
      ids.data<int32_t>()[b * T + s] = masked->mask_token_id(i);
      stand_ids.data<int32_t>()[b * T + s] = stand_in[i];
      groups.data<int32_t>()[b * T + s] = s < n + kMasks ? 6 : 2;
    }
  auto ctx = std::make_shared<StepContext>();
  ctx->mask.group_ids = groups;
  ctx->position_ids = positions_from_groups(groups);
  Cache cm, cr;
  cm.set_context(ctx);
  cr.set_context(ctx);
  const Tensor lm = masked->forward(ids, cm), lr = reference->forward(stand_ids, cr);
  EXPECT_LT(max_abs_diff(lm, lr), 1e-6);
  const Tensor dlogits = random_tensor(lm.shape(), 9);
  masked->zero_grad();
  reference->zero_grad();
  masked->backward(dlogits, cm);
  reference->backward(dlogits, cr);
  const Tensor& mask_grad = masked->param(kMaskEmbeddingName).grad;
  const Tensor& wte_grad = masked->param("model.embed_tokens.weight").grad;
  const Tensor& ref_grad = reference->param("model.embed_tokens.weight").grad;
  EXPECT_GT(max_abs_diff(mask_grad, Tensor::zeros(mask_grad.shape())), 1e-4);  // the masks do train
  for (int64_t i = 0; i < kMasks; ++i) {
    EXPECT_LT(max_abs_diff(mask_grad.select(0, i), ref_grad.select(0, stand_in[i])), 1e-6) << "mask " << i;
    EXPECT_EQ(max_abs_diff(wte_grad.select(0, stand_in[i]), Tensor::zeros({32})), 0.0) << "token " << stand_in[i];
  }
  EXPECT_LT(max_abs_diff(wte_grad.slice(0, 0, 44), ref_grad.slice(0, 0, 44)), 1e-6);
  // Ids past the masks are refused, naming both ranges.
  Tensor bad = Tensor::from_vector(std::vector<int32_t>{1, 52}, {1, 2});
  Cache cb;
  EXPECT_NE(error_of([&] { masked->forward(bad, cb); }).find("mask tokens [48, 52)"), std::string::npos);
}

// q of every proposal equals softmax of the drafter's plain forward over [committed, masks], at
// the last committed token (draft 1) and mask i (draft i + 1), whatever each row kept before:
// the KV-cached call with re-fed tokens, padding and dropped mask slots changes nothing.
TEST(ParallelSpecDrafter, ProposalsAreThePlainForwardsDistributions) {
  single_thread();
  auto drafter_model = random_model(spec_llama(2), kMasks);
  const int64_t V = 48;
  SamplingConfig t1;
  t1.seed = 2;
  for (const auto& prompts : {std::vector<std::vector<int32_t>>{{3, 4, 5, 6, 7}, {8, 9, 10, 11, 12}, {1, 2, 3, 4, 5}},
                              std::vector<std::vector<int32_t>>{{3}, {9}, {17}}}) {
    for (int gamma : {1, 3, 5}) {
      ParallelSpecDrafter drafter(*drafter_model);
      DraftSetup setup;
      setup.prompts = prompts;
      setup.sequences = {0, 1, 2};
      setup.gamma = gamma;
      setup.max_len = 40;
      setup.sampling = t1;
      drafter.begin(setup);
      std::vector<std::vector<int32_t>> committed = prompts;
      const std::vector<bool> active = {true, true, true};
      // Rounds keeping all, none and some of each row's drafts, so rows fall out of step.
      const std::vector<std::vector<int>> kept = {{gamma, 0, gamma / 2}, {0, gamma, gamma}, {gamma / 2, 0, 0}};
      for (uint32_t round = 0; round < 4; ++round) {
        const DraftBlock block = drafter.propose(round, active);
        ASSERT_EQ(block.forwards, 1);
        for (int64_t b = 0; b < 3; ++b) {
          std::vector<int32_t> row = committed[b];
          for (int64_t i = 0; i + 1 < gamma; ++i) row.push_back(drafter_model->mask_token_id(i));
          const Tensor logits = logits_of(*drafter_model, row);
          const int64_t last = static_cast<int64_t>(committed[b].size()) - 1;
          for (int i = 0; i < gamma; ++i) {
            const std::vector<double> want = sampling_distribution(logits.data<float>() + (last + i) * V, V, t1);
            double diff = 0;
            for (int64_t v = 0; v < V; ++v) diff = std::max(diff, std::abs(want[v] - block.q[(b * gamma + i) * V + v]));
            EXPECT_LT(diff, 1e-5) << "gamma " << gamma << " round " << round << " row " << b << " draft " << i;
          }
        }
        if (round == 3) break;
        std::vector<int> accepted(3);
        std::vector<int32_t> next(3);
        for (int64_t b = 0; b < 3; ++b) {
          accepted[b] = kept[round][b];
          next[b] = static_cast<int32_t>(20 + round * 3 + b);
          for (int i = 0; i < accepted[b]; ++i) committed[b].push_back(block.tokens[b * gamma + i]);
          committed[b].push_back(next[b]);
        }
        drafter.commit(active, accepted, next);
      }
    }
  }
}

namespace {

struct Models {
  std::unique_ptr<TransformerLM> target = random_model(spec_llama(2), 0);
  std::unique_ptr<TransformerLM> small = random_model(spec_llama(1), kMasks);  // agrees rarely
  std::unique_ptr<TransformerLM> copy = copy_of(*target, kMasks);  // draft 1 always right, the masks random
};

Models& models() {
  single_thread();
  static Models m;
  return m;
}

const std::vector<std::vector<int32_t>> kOnePrompt = {{1, 5, 9, 2}};
const std::vector<std::vector<int32_t>> kFourPrompts = {{3, 4, 5, 6}, {7, 8, 9, 10}, {11, 12, 13, 14}, {20, 21, 22, 23}};
const std::vector<std::vector<int32_t>> kMixedLengths = {{1, 2, 3}, {4, 5, 6, 7, 8}, {9, 10, 11}, {30}};

}  // namespace

TEST(ParallelSpecGreedy, EqualsGreedyGenerateWithOneDrafterForwardPerRound) {
  Models& m = models();
  const int max_new = 21;
  for (const auto* prompts : {&kOnePrompt, &kFourPrompts, &kMixedLengths}) {
    const auto want = generate(*m.target, *prompts, max_new, SamplingConfig::greedy());
    for (TransformerLM* draft : {m.small.get(), m.copy.get()}) {
      for (int gamma : {1, 3, 5}) {
        const std::unique_ptr<Drafter> drafter = make_model_drafter(*draft);
        ASSERT_NE(dynamic_cast<ParallelSpecDrafter*>(drafter.get()), nullptr);
        const SpeculativeResult got =
            speculative_generate(*m.target, *drafter, *prompts, max_new, SamplingConfig::greedy(), gamma);
        const std::string tag = "batch " + std::to_string(prompts->size()) + ", gamma " + std::to_string(gamma) +
                                (draft == m.small.get() ? ", small" : ", copy");
        EXPECT_EQ(got.tokens, want) << tag;
        EXPECT_EQ(got.stats.drafter_calls, got.stats.target_calls) << tag;
        if (draft == m.copy.get()) EXPECT_EQ(got.stats.acceptance_at(0), 1.0) << tag;  // the real token's own output
      }
    }
  }
}

TEST(ParallelSpecSampling, FirstThreeTokensMatchPlainSamplingAtT1) {
  Models& m = models();
  const int64_t V = 48, n = 6000;
  SamplingConfig t1;
  t1.seed = 3;
  const auto plain = generate(*m.target, rows_of(n), 3, t1);
  SamplingConfig other = t1;
  other.seed = 4;
  for (const auto& [draft, gamma] : {std::pair<TransformerLM*, int>{m.copy.get(), 3}, {m.small.get(), 2}}) {
    ParallelSpecDrafter drafter(*draft);
    const auto spec = speculative_generate(*m.target, drafter, rows_of(n), 3, other, gamma);
    std::string report;
    EXPECT_TRUE(same_distribution(plain, spec.tokens, V, report)) << "gamma " << gamma << "\n" << report;
    std::printf("gamma %d, acceptance %.3f\n%s", gamma, spec.stats.acceptance_rate(), report.c_str());
    EXPECT_GT(spec.stats.acceptance_rate(), 0.05);  // both branches of the sampler ran
    EXPECT_LT(spec.stats.acceptance_rate(), 0.98);
  }
  // The test has power: the drafter's own samples (every draft accepted) fail it.
  std::string report;
  EXPECT_FALSE(same_distribution(plain, generate(*m.small, rows_of(n), 3, other), V, report)) << report;
}

TEST(ParallelSpecInput, BadInputIsRefused) {
  Models& m = models();
  const std::string no_masks = error_of([&] { ParallelSpecDrafter d(*m.target); });
  EXPECT_NE(no_masks.find("no mask tokens"), std::string::npos) << no_masks;
  EXPECT_NE(dynamic_cast<LMDrafter*>(make_model_drafter(*m.target).get()), nullptr);
  ParallelSpecDrafter drafter(*m.small);
  const std::string too_long =
      error_of([&] { speculative_generate(*m.target, drafter, kOnePrompt, 8, SamplingConfig::greedy(), 6); });
  EXPECT_NE(too_long.find("gamma 6 is more than the drafter's 4 mask tokens + 1"), std::string::npos) << too_long;
}
