// The router section (task.name: router; trainer/config_router.cpp) and router_spec: defaults,
// the resolved YAML round trip, and one clear error per bad input, each naming the key and the fix.
// The backbone is a Hugging Face config.json of 6 layers (model.init_from gives the layer count).
#include <gtest/gtest.h>

#include "tests/unit/run_config_fixture.h"
#include "trainer/router_backbone.h"

using namespace anvil;
using anvil::testing::contains;

namespace {

class RouterConfigTest : public anvil::testing::RunConfigTest {
 protected:
  void SetUp() override {
    RunConfigTest::SetUp();
    write("backbone/config.json", R"({"model_type": "llama", "vocab_size": 300, "hidden_size": 32,
        "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64})");
  }
  // A router run on the 6-layer backbone, plus `extra` YAML lines under router:.
  std::string yaml(const std::string& router = "") const {
    return "task: {name: router}\nmodel: {init_from: backbone}\ndata: {train: data/kjv.h5}\n"
           "tokenizer: {path: data/tokenizer.json}\ntraining: {steps: 10}\nrouter:\n  kind: mindskip\n" + router;
  }
};

TEST_F(RouterConfigTest, DefaultsResolveToTheLastNButTheFinalLayer) {
  const RunConfig c = load(yaml("  n: 3\n"));
  EXPECT_EQ(c.task.name, "router");
  EXPECT_TRUE(c.router.layers.empty());
  const RouterSpec spec = router_spec(c, c.model.num_hidden_layers);
  EXPECT_EQ(spec.layers, (std::vector<int64_t>{2, 3, 4}));  // L - 1 - n .. L - 2 for L = 6, n = 3
  EXPECT_EQ(spec.kind, RouterKind::MindSkip);
  EXPECT_EQ(spec.scope, SkipScope::Attention);
  EXPECT_EQ(spec.unit, SkipUnit::Sequence);
  EXPECT_FLOAT_EQ(spec.tau, 0.5f);
  EXPECT_TRUE(spec.train_skipped);  // training computes skipped units by default (no sticky skipping)
  // n past the layers clips at 0: every layer but the last.
  EXPECT_EQ(router_spec(load(yaml("  n: 16\n")), 6).layers, (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST_F(RouterConfigTest, EveryKeyRoundTripsThroughTheResolvedYaml) {
  const RunConfig a = load(yaml("  layers: [4, 1]\n  scope: block\n  unit: token\n  tau: 0.4\n  objective: kl\n"
                                "  capacity_target: 0.6\n  capacity_weight: 0.25\n  train_skipped: false\n"));
  EXPECT_EQ(a.router.layers, (std::vector<int64_t>{1, 4}));  // sorted
  const RunConfig b = load_run_config(write("resolved/config.yaml", to_yaml(a)), {});
  for (const auto& d : config_differences(a, b)) ADD_FAILURE() << d;
  const RouterSpec spec = router_spec(b, 6);
  EXPECT_EQ(spec.scope, SkipScope::Block);
  EXPECT_EQ(spec.unit, SkipUnit::Token);
  EXPECT_FLOAT_EQ(spec.tau, 0.4f);
  EXPECT_FALSE(spec.train_skipped);
  EXPECT_EQ(load(yaml("  scope: mlp\n")).router.scope, "mlp");
  EXPECT_EQ(router_spec(load(yaml("  scope: mlp\n")), 6).scope, SkipScope::FeedForward);
  const RunConfig d = load(yaml("  hidden: 16\n  windows: 4\n  search_budget: 8\n  focal_gamma: 1.5\n"),
                           {"router.kind=drllm"});
  EXPECT_EQ(router_spec(d, 6).kind, RouterKind::DrLLM);
  EXPECT_EQ(router_spec(d, 6).hidden, 16);
  EXPECT_EQ(router_spec(d, 6).windows, 4);
  // A run of another task writes the section at its defaults, and reads it back.
  const RunConfig lm = load(anvil::testing::kMinimal);
  for (const auto& diff : config_differences(lm, load_run_config(write("lm/config.yaml", to_yaml(lm)), {})))
    ADD_FAILURE() << diff;
}

// One line per bad input: the message names the key and says how to fix it.
TEST_F(RouterConfigTest, BadInputsGiveOneClearErrorEach) {
  auto expect = [&](const std::string& router, const std::vector<std::string>& parts,
                    const std::vector<std::string>& overrides = {}) {
    const std::string msg = error(yaml(router), overrides);
    for (const std::string& part : parts) EXPECT_TRUE(contains(msg, part)) << "expected \"" << part << "\" in:\n" << msg;
  };
  expect("  layers: [6]\n", {"router.layers", "layer 6, outside the backbone's 6 layers", "[0, 4]"});
  expect("  layers: [-1]\n", {"router.layers", "layer -1, outside"});
  expect("  layers: [5]\n", {"router.layers", "the last layer, which never skips"});
  expect("  layers: [2, 2]\n", {"router.layers", "twice"});
  expect("  layers: [two]\n", {"router.layers", "'two', which is not a layer index"});
  expect("  n: 0\n", {"router.n", "at least 1"});
  expect("  tau: 0\n", {"router.tau", "must be in (0, 1)"});
  expect("  tau: 1.0\n", {"router.tau", "must be in (0, 1)"});
  expect("  capacity_target: 0\n", {"router.capacity_target", "must be in (0, 1]"});
  expect("  capacity_target: 1.5\n", {"router.capacity_target", "must be in (0, 1]"});
  expect("  capacity_weight: -1\n", {"router.capacity_weight", ">= 0"});
  expect("  scope: atention\n", {"router.scope", "did you mean attention?"});
  expect("  unit: tokens\n", {"router.unit", "did you mean token?"});
  expect("  objective: kld\n", {"router.objective", "did you mean kl?"});
  expect("  hidden: 64\n", {"router.hidden", "configures kind: drllm only"});
  expect("", {"router.kind", "did you mean mindskip?"}, {"router.kind=mindskp"});
  expect("  tau: 0.3\n", {"router.tau", "configures kind: mindskip only"}, {"router.kind=drllm"});
  expect("  train_skipped: false\n", {"router.train_skipped", "configures kind: mindskip only"}, {"router.kind=drllm"});
  expect("  search_budget: 0\n", {"router.search_budget", "at least 1"}, {"router.kind=drllm"});
  expect("  focal_gamma: -1\n", {"router.focal_gamma", ">= 0"}, {"router.kind=drllm"});
  expect("  windows: 0\n", {"router.windows", "at least 1"}, {"router.kind=drllm"});
  expect("", {"model.init_from", "required for task.name: router"}, {"model={hidden_size: 32, num_attention_heads: 4, intermediate_size: 64, max_position_embeddings: 64}"});
  expect("", {"parallel.sp", "must be 1 for task.name: router"}, {"parallel.sp=2"});
  expect("", {"router.capacity_wieght", "did you mean router.capacity_weight"}, {"router.capacity_wieght=1"});
  // Router keys with another task.
  const std::string other = error(std::string(anvil::testing::kMinimal) + "router:\n  tau: 0.3\n");
  EXPECT_TRUE(contains(other, "router.tau") && contains(other, "task.name is lm") &&
              contains(other, "set task.name: router or remove the router section")) << other;
}

}  // namespace
