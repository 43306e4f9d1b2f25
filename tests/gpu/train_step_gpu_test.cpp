// Whole training steps on CUDA against the CPU backend: the small models of
// tests/support/small_models.h (Llama untied with biases, Llama tied, GPT-2), same weights,
// same batch, forward + backward + AdamW, through the model and optimizer API the trainer uses.
//   f32:  the loss of every step within 1e-5 relative, every param after 2 steps within 1e-4
//         (max-norm relative per param, tests/support/gpu_check.h).
//   bf16 mixed precision (bf16 compute copies, f32 master weights and optimizer state):
//         the loss of every step within 2e-2 relative of the f32 CPU run. bf16 activations
//         carry 2^-8 relative rounding per op; through two blocks, attention, the head and the
//         log-softmax the loss moves by well under 1%, and a broken kernel moves it by far more.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "models/transformer.h"
#include "optim/adamw.h"
#include "tests/support/gpu_check.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace anvil::testing {
void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }  // not a byte dump in gtest's output
}  // namespace anvil::testing

namespace {

// AdamW as the layout tests configure it: eps 1e-5 keeps fp32 summation-order noise in
// near-zero gradients from being amplified into lr-sized differences (data_parallel_test.cpp).
AdamWConfig adam_config() {
  AdamWConfig c;
  c.eps = 1e-5;
  c.weight_decay = 0.1;
  return c;
}

struct TrainedLosses {
  std::vector<float> losses;  // the loss of each step, then the loss after the last step
};

// `steps` optimizer steps on one fixed batch; ids/targets are moved to the model's device.
TrainedLosses train(TransformerLM& model, Optimizer& opt, const Tensor& ids, const Tensor& targets, Device device,
                    int steps) {
  // A model moved with to(device, dtype) takes ids on that device (models/transformer.h on branch model).
  const Tensor ids_d = ids.to(device), targets_d = targets.to(device);
  TrainedLosses r;
  for (int s = 0; s < steps; ++s) {
    Cache c;
    model.zero_grad();
    r.losses.push_back(model.forward_loss(ids_d, targets_d, c));
    model.backward_loss(c);
    opt.step(1e-3);
  }
  Cache c;
  r.losses.push_back(model.forward_loss(ids_d, targets_d, c));
  return r;
}

class TrainStepGpu : public ::testing::TestWithParam<ModelCase> {};

TEST_P(TrainStepGpu, F32StepsMatchCpu) {
  const ModelConfig& cfg = GetParam().config;
  const int64_t B = 4, T = cfg.max_position_embeddings;
  const Tensor ids = random_ids({B, T}, static_cast<int32_t>(cfg.vocab_size), 301);
  const Tensor targets = random_ids({B, T}, static_cast<int32_t>(cfg.vocab_size), 302);

  TransformerLM cpu_model(cfg);
  cpu_model.init_weights(7);
  AdamW cpu_opt(cpu_model.params(), adam_config());
  const TrainedLosses cpu = train(cpu_model, cpu_opt, ids, targets, Device::cpu(), 2);

  TransformerLM gpu_model(cfg);
  gpu_model.init_weights(7);
  gpu_model.to(gpu(), DType::F32);
  AdamW gpu_opt(gpu_model.params(), adam_config());
  const TrainedLosses dev = train(gpu_model, gpu_opt, ids, targets, gpu(), 2);

  ASSERT_EQ(dev.losses.size(), cpu.losses.size());
  for (size_t i = 0; i < cpu.losses.size(); ++i)
    EXPECT_NEAR(dev.losses[i], cpu.losses[i], 1e-5 * std::fabs(cpu.losses[i])) << "loss " << i;
  for (Param* p : gpu_model.params()) {
    EXPECT_TRUE(p->value.device() == gpu()) << p->name << " is " << p->value.describe();
    EXPECT_GPU_NEAR(p->value, cpu_model.param(p->name).value, 1e-4, p->name + " after 2 steps");
  }
}

TEST_P(TrainStepGpu, Bf16MixedPrecisionLossTracksF32Cpu) {
  const ModelConfig& cfg = GetParam().config;
  const int64_t B = 4, T = cfg.max_position_embeddings;
  const Tensor ids = random_ids({B, T}, static_cast<int32_t>(cfg.vocab_size), 303);
  const Tensor targets = random_ids({B, T}, static_cast<int32_t>(cfg.vocab_size), 304);

  TransformerLM cpu_model(cfg);
  cpu_model.init_weights(9);
  AdamW cpu_opt(cpu_model.params(), adam_config());
  const TrainedLosses cpu = train(cpu_model, cpu_opt, ids, targets, Device::cpu(), 2);

  TransformerLM gpu_model(cfg);
  gpu_model.init_weights(9);
  gpu_model.to(gpu(), DType::BF16);
  for (Param* p : gpu_model.params())
    EXPECT_EQ(p->value.dtype(), DType::BF16) << p->name << " should compute in bf16: " << p->value.describe();
  AdamW gpu_opt(gpu_model.params(), adam_config());
  const TrainedLosses dev = train(gpu_model, gpu_opt, ids, targets, gpu(), 2);

  ASSERT_EQ(dev.losses.size(), cpu.losses.size());
  for (size_t i = 0; i < cpu.losses.size(); ++i) {
    EXPECT_TRUE(std::isfinite(dev.losses[i])) << "loss " << i;
    EXPECT_NEAR(dev.losses[i], cpu.losses[i], 2e-2 * std::fabs(cpu.losses[i])) << "loss " << i;
  }
  // Training moved the loss the same way on both (the steps did something on the GPU too).
  EXPECT_LT(dev.losses.back(), dev.losses.front()) << "bf16 steps did not reduce the loss on a fixed batch";
}

INSTANTIATE_TEST_SUITE_P(SmallModels, TrainStepGpu, ::testing::ValuesIn(small_model_cases()),
                         [](const ::testing::TestParamInfo<ModelCase>& i) { return std::string(i.param.name); });

}  // namespace
