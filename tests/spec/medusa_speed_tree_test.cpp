// The machine-sized Medusa tree (issue 15, `anvil eval medusa --build-tree N --for-speed`): the
// cost model's interpolation by hand; build_medusa_tree_for_speed against a brute force over the
// tree sizes under a per-node cost (a CPU: few nodes) and a flat cost (a GPU: all of them); and
// measure_medusa_cost on a tiny model giving a positive time for every size it lists.
#include <gtest/gtest.h>

#include <cmath>

#include "eval/medusa_decode.h"
#include "models/transformer.h"
#include "tests/support/reference.h"

using namespace anvil;

namespace {
const std::vector<std::vector<double>> kAccuracy = {{0.6, 0.15, 0.05, 0.02}, {0.4, 0.2, 0.05, 0.01}, {0.3, 0.1, 0.05, 0.0}};
}

TEST(MedusaSpeedTree, CostModelInterpolatesBetweenMeasuredSizes) {
  MedusaCostModel c;
  c.sizes = {1, 2, 4, 8};
  c.verify_seconds = {1.0, 2.0, 4.0, 10.0};
  c.head_seconds = 0.5;
  EXPECT_DOUBLE_EQ(c.round_seconds(1, 1), 2.5);   // T = 2, one head
  EXPECT_DOUBLE_EQ(c.round_seconds(2, 2), 4.0);   // T = 3: between 2 and 4; two heads
  EXPECT_DOUBLE_EQ(c.round_seconds(5, 1), 4.0 + 3.0 + 0.5);  // T = 6: between 4 (4 s) and 8 (10 s)
  EXPECT_DOUBLE_EQ(c.round_seconds(7, 3), 11.5);  // T = 8, three heads
}

TEST(MedusaSpeedTree, PicksTheSizeABruteForceOverSizesPicks) {
  for (double per_node : {0.0, 0.05, 0.3, 1.0}) {  // round cost 1 + per_node · T, a plain step 1
    MedusaCostModel c;
    for (int64_t T = 1; T <= 25; ++T) {
      c.sizes.push_back(T);
      c.verify_seconds.push_back(1.0 + per_node * static_cast<double>(T - 1));
    }
    c.plain_seconds = 1.0;
    double best = 0;
    int best_n = 0;
    for (int n = 1; n <= 24; ++n) {
      const MedusaTree tree = build_medusa_tree(kAccuracy, n);
      const double s = (1 + expected_accept_length(tree, kAccuracy)) / c.round_seconds(n, tree.depth());
      if (s > best) best = s, best_n = n;
    }
    const SpeedTree got = build_medusa_tree_for_speed(kAccuracy, 24, c);
    EXPECT_EQ(got.tree.nodes(), best_n) << "per node " << per_node;
    EXPECT_NEAR(got.predicted_speedup, best, 1e-12);
    if (per_node == 0.0) EXPECT_EQ(best_n, 24);  // a flat cost: every node pays
    if (per_node == 1.0) EXPECT_LE(best_n, 2);   // each node costs a step: almost none pay
  }
}

TEST(MedusaSpeedTree, MeasuresEverySizeOnARealModel) {
  ModelConfig mc = ModelConfig::preset("llama");
  mc.vocab_size = 64;
  mc.hidden_size = 32;
  mc.num_hidden_layers = 2;
  mc.num_attention_heads = 4;
  mc.num_key_value_heads = 2;
  mc.head_dim = 8;
  mc.intermediate_size = 64;
  mc.max_position_embeddings = 64;
  TransformerLM base(mc);
  base.init_weights(1);
  MedusaHeads heads(2, 1, mc.hidden_size, mc.vocab_size, nullptr);
  init_params(heads.params(), 1, 0.02f, 0.02f);
  const MedusaCostModel c = measure_medusa_cost(base, heads, 12, 10, 3);
  EXPECT_EQ(c.sizes, (std::vector<int64_t>{1, 2, 4, 8, 13}));
  ASSERT_EQ(c.verify_seconds.size(), c.sizes.size());
  for (double s : c.verify_seconds) EXPECT_GT(s, 0.0);
  EXPECT_GT(c.head_seconds, 0.0);
  EXPECT_GT(c.plain_seconds, 0.0);
  EXPECT_NE(anvil::testing::error_of([&] { measure_medusa_cost(base, heads, 60, 10); }).find("positions"),
            std::string::npos);
}
