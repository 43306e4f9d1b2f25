// Dr.LLM routers on a GPU (issue 18): the routed model's forced-action forward (gathered rows,
// skip / execute / repeat), the routers' logits and KV-cached decoding with per-row decisions and
// repeat KV layers on cuda:0 in f32 against the CPU on the same weights (1e-4 relative: a few
// layers of f32 ops, tests/support/gpu_check.h's 1e-5 per op); then the drllm task's run on the
// GPU against the CPU run of the same config, step for step (1e-3, as the other task GPU tests).
// No new kernels: the router is matmuls and GELU, gather/scatter are row copies.
#include <gtest/gtest.h>

#include "models/kv_cache.h"
#include "models/transformer.h"
#include "tests/support/distill_fixture.h"
#include "tests/support/gpu_check.h"
#include "tests/support/gpu_run.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

ModelConfig llama(int64_t layers) {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 67;
  c.hidden_size = 32;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 48;
  c.max_position_embeddings = 64;
  return c;
}

std::unique_ptr<TransformerLM> routed(const RouterSpec& spec) {
  auto m = std::make_unique<TransformerLM>(llama(4), ModelLayout{}, &spec);
  m->init_weights(3);
  randomize_params(m->params());
  uint32_t s = 900;
  for (Param* p : m->router_params()) p->value.copy_(random_tensor(p->value.shape(), s++, -3.0f, 3.0f));
  return m;
}

const TinyRun& tiny() { return distill_target_run("drllm_gpu"); }

RunConfig drllm_config(const std::string& label, const std::vector<std::string>& extra) {
  std::vector<std::string> all = {"run.out_dir=" + tiny().dir + "/" + label, "checkpoint.resume=none",
                                  "task.name=router", "model={init_from: " + tiny().dir + "/target}",
                                  "router={kind: drllm, layers: [0], hidden: 16, windows: 4, search_budget: 6}",
                                  "schedule.warmup_steps=0", "training.eval_every=0", "training.steps=6"};
  all.insert(all.end(), extra.begin(), extra.end());
  return load_run_config(tiny().config, all);
}

}  // namespace

TEST(DrLLMGpu, ForcedActionsAndCachedDecodingMatchTheCpu) {
  RouterSpec spec;
  spec.kind = RouterKind::DrLLM;
  spec.layers = {1, 2};
  spec.hidden = 8;
  spec.windows = 4;
  auto cpu = routed(spec);
  auto dev = routed(spec);
  dev->to(gpu(), DType::F32);
  const Tensor ids = random_ids({4, 10}, 67, 5);
  Tensor actions = Tensor::full({4, 4}, 1.0, DType::I32);
  const int32_t forced[4][2] = {{0, 2}, {2, 1}, {1, 0}, {2, 2}};
  for (int b = 0; b < 4; ++b)
    for (int j = 0; j < 2; ++j) actions.data<int32_t>()[b * 4 + 1 + j] = forced[b][j];
  auto run = [&](TransformerLM& m, const Tensor& x) {
    auto ctx = std::make_shared<StepContext>();
    ctx->layer_actions = actions;
    Cache c;
    c.set_context(ctx);
    return m.forward(x, c).to(Device::cpu());
  };
  EXPECT_LT(max_rel_diff(run(*dev, on_gpu(ids)), run(*cpu, ids)), 1e-4);
  // Cached: the routers decide at prefill on both devices alike; then two decoding steps.
  KVCache kv_cpu(cpu->config(), 4, 16), kv_dev(dev->config(), 4, 16, gpu(), DType::F32);
  kv_cpu.set_block_action(0, 1, 2);
  kv_dev.set_block_action(0, 1, 2);
  Tensor step = ids;
  for (int s = 0; s < 3; ++s) {
    const Tensor want = cpu->forward_cached(step, kv_cpu, true);
    const Tensor got = dev->forward_cached(on_gpu(step), kv_dev, true).to(Device::cpu());
    EXPECT_LT(max_rel_diff(got, want), 1e-4) << "call " << s;
    step = random_ids({4, 1}, 67, 40 + s);
  }
  for (int b = 0; b < 4; ++b)
    for (int l : {1, 2}) EXPECT_EQ(kv_dev.block_action(b, l), kv_cpu.block_action(b, l)) << b << " " << l;
}

TEST(DrLLMGpu, TaskFp32MatchesTheCpu) {
  expect_gpu_run_tracks_cpu(drllm_config, {}, "fp32", 1e-3, {"path_loss"});
}
