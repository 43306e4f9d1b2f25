// ParallelSpec on CUDA (label gpu + spec): a drafter with mask tokens runs its group-wise
// training forward/backward on the GPU as on the CPU (f32: logits and the mask table's gradient),
// and KV-cached ParallelSpec drafting on the GPU (re-fed rows, dropped mask slots, padding with
// explicit positions) keeps greedy speculative output equal to greedy generate() on the GPU.
// Tolerance: the model-level f32 comparison chains a few blocked reductions (two blocks, the
// head) of kF32Tol each (tests/support/gpu_check.h), so 5e-5 relative to the max norm.
#include <gtest/gtest.h>

#include "eval/parallel_spec_drafter.h"
#include "eval/speculative.h"
#include "models/step_context.h"
#include "tests/support/gpu_check.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr int64_t kMasks = 4;

// The same random weights for the same config and mask count (Philox streams named after params).
std::unique_ptr<TransformerLM> random_model(int64_t masks, Device device) {
  auto m = std::make_unique<TransformerLM>(spec_llama(2));
  m->init_weights(7);
  if (masks > 0) m->add_mask_embeddings(masks, 7);
  randomize_params(m->params());
  m->to(device, DType::F32);
  return m;
}

}  // namespace

TEST(ParallelSpecGpu, GroupWiseForwardAndBackwardMatchCpuF32) {
  auto cpu_model = random_model(kMasks, Device::cpu());
  auto gpu_model = random_model(kMasks, gpu());
  // Two rows: 20 real tokens, then the masks of anchors 12, 3 and 19.
  const int64_t B = 2, n = 20, T = n + 3 * kMasks;
  Tensor ids = random_ids({B, T}, 48, 11);
  Tensor groups = Tensor::full({B, T}, -1, DType::I32);
  const int32_t anchors[] = {12, 3, 19};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = n; s < T; ++s) {
      ids.data<int32_t>()[b * T + s] = cpu_model->mask_token_id((s - n) % kMasks);
      groups.data<int32_t>()[b * T + s] = anchors[(s - n) / kMasks];
    }
  auto context = [&](Device device) {
    auto ctx = std::make_shared<StepContext>();
    ctx->mask.group_ids = groups;
    ctx->position_ids = positions_from_groups(groups);
    ctx->to(device);
    return ctx;
  };
  Cache cc, cg;
  cc.set_context(context(Device::cpu()));
  cg.set_context(context(gpu()));
  const Tensor want = cpu_model->forward(ids, cc).clone();
  const Tensor got = gpu_model->forward(on_gpu(ids), cg);
  EXPECT_GPU_NEAR(got, want, 5e-5, "logits");
  const Tensor dlogits = random_tensor(want.shape(), 12);
  cpu_model->zero_grad();
  gpu_model->zero_grad();
  cpu_model->backward(dlogits, cc);
  gpu_model->backward(on_gpu(dlogits), cg);
  EXPECT_GPU_NEAR(gpu_model->param(kMaskEmbeddingName).grad, cpu_model->param(kMaskEmbeddingName).grad, 5e-5,
                  "mask table gradient");
  EXPECT_GPU_NEAR(gpu_model->param("model.embed_tokens.weight").grad,
                  cpu_model->param("model.embed_tokens.weight").grad, 5e-5, "token table gradient");
}

TEST(ParallelSpecGpu, GreedySpeculativeEqualsGreedyGenerate) {
  auto target = random_model(0, gpu());
  auto drafter = random_model(kMasks, gpu());  // the target's weights (same names) plus masks: draft 1 agrees
  const std::vector<std::vector<int32_t>> mixed = {{1, 2, 3}, {4, 5, 6, 7, 8}, {9, 10, 11}, {30}};
  const std::vector<std::vector<int32_t>> four = {{3, 4, 5, 6}, {7, 8, 9, 10}, {11, 12, 13, 14}, {20, 21, 22, 23}};
  for (const auto* prompts : {&mixed, &four}) {
    const auto want = generate(*target, *prompts, 20, SamplingConfig::greedy());
    for (int gamma : {1, 3, 5}) {
      ParallelSpecDrafter d(*drafter);
      const SpeculativeResult got = speculative_generate(*target, d, *prompts, 20, SamplingConfig::greedy(), gamma);
      EXPECT_EQ(got.tokens, want) << "gamma " << gamma;
      EXPECT_EQ(got.stats.drafter_calls, got.stats.target_calls) << "gamma " << gamma;
    }
  }
}
