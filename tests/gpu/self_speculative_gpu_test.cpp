// Early-exit self-speculation on CUDA (label gpu + spec): the shared-cache rounds (early-exit
// forwards whose layer E-1 states are copied into a device buffer, then layers E .. L-1 from them
// at per-row positions) keep greedy output equal to greedy generate() on the GPU, and after rounds
// with different acceptances per row the GPU's cache equals the CPU's full recompute of the
// committed tokens. f32 on both sides; tolerance as parallel_spec_gpu_test: a few blocked
// reductions of kF32Tol each, 5e-5 relative to the max norm.
#include <gtest/gtest.h>

#include "eval/self_speculative.h"
#include "tests/support/gpu_check.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// The same random weights for the same config (Philox streams named after params).
std::unique_ptr<TransformerLM> random_llama(Device device) {
  auto m = std::make_unique<TransformerLM>(spec_llama(4));
  m->init_weights(7);
  randomize_params(m->params());
  m->to(device, DType::F32);
  return m;
}

}  // namespace

TEST(SelfSpeculativeGpu, GreedyEqualsGreedyGenerate) {
  auto model = random_llama(gpu());
  const std::vector<std::vector<int32_t>> mixed = {{1, 2, 3}, {4, 5, 6, 7, 8}, {9, 10, 11}, {30}};
  const auto want = generate(*model, mixed, 20, SamplingConfig::greedy());
  for (int64_t e = 1; e < 4; ++e)
    for (int gamma : {1, 3}) {
      const SpeculativeResult got = self_speculative_generate(*model, e, mixed, 20, SamplingConfig::greedy(), gamma);
      EXPECT_EQ(got.tokens, want) << "exit " << e << ", gamma " << gamma;
    }
}

TEST(SelfSpeculativeGpu, SharedCacheEqualsTheCpuRecompute) {
  auto cpu_model = random_llama(Device::cpu());
  auto gpu_model = random_llama(gpu());
  SamplingConfig t1;
  t1.seed = 5;
  const std::vector<std::vector<int32_t>> prompts = {{3, 4, 5, 6}, {7, 8, 9, 10}, {11, 12, 13, 14}};
  SpeculativeStats stats;
  stats.reached.assign(3, 0);
  stats.accepted.assign(3, 0);
  SelfSpeculativeBatch batch(*gpu_model, 2, 3, t1, prompts, {0, 1, 2}, 60, stats);
  for (uint32_t round = 0; round < 6; ++round) batch.step(round, {true, true, true});
  EXPECT_GT(stats.acceptance_rate(), 0.0);
  EXPECT_LT(stats.acceptance_rate(), 1.0);
  for (int64_t b = 0; b < 3; ++b) {
    const std::vector<int32_t>& seq = batch.committed(b);
    const int64_t n = static_cast<int64_t>(seq.size()) - 1;
    ASSERT_EQ(batch.cache().row_length(b), n);
    KVCache want(cpu_model->config(), 1, 60);
    cpu_model->forward_cached(Tensor::from_vector(std::vector<int32_t>(seq.begin(), seq.end() - 1), {1, n}), want);
    for (int64_t l = 0; l < 4; ++l) {
      const std::string tag = "row " + std::to_string(b) + ", layer " + std::to_string(l);
      EXPECT_GPU_NEAR(batch.cache().layer(l).k.select(0, b).slice(0, 0, n).contiguous(),
                      want.layer(l).k.select(0, 0).slice(0, 0, n).contiguous(), 5e-5, tag + " keys");
      EXPECT_GPU_NEAR(batch.cache().layer(l).v.select(0, b).slice(0, 0, n).contiguous(),
                      want.layer(l).v.select(0, 0).slice(0, 0, n).contiguous(), 5e-5, tag + " values");
    }
  }
}
