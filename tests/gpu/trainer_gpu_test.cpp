// The trainer on a GPU, end to end on the tiny Llama of tests/support/tiny_run.h (a tokenizer and
// token store made from the GPL): run.device: cuda in bf16 (f32 masters, gradients and AdamW state)
// and in fp32, each against the CPU f32 run of the same config, step for step; the GPU
// checkpoint (f32 masters) resumed by an fp32 CPU trainer; KV-cached sampling on the GPU.
//   fp32 on the GPU: every step's loss within 1e-3 relative of the CPU's (the kernels agree to
//     ~1e-6 per op; 20 AdamW steps let summation-order noise grow, but not to 1e-3).
//   bf16: within 2e-2 relative (tests/gpu/train_step_gpu_test.cpp explains the figure), and
//     the loss falls by as much as the CPU run's, within 0.2 nats.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/support/reference.h"
#include "tests/support/tiny_run.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::max_abs_diff;

namespace {

std::vector<double> losses(const Trainer& t) {
  std::vector<double> out;
  for (const StepRecord& r : t.history()) out.push_back(r.loss);
  return out;
}

// The CPU f32 reference run of the tiny config (its own directory).
std::vector<double> cpu_losses(const std::string& name) {
  const auto run = anvil::testing::make_tiny_run(name);
  Trainer cpu(load_run_config(run.config), TrainerMode::Quiet);
  cpu.train();
  return losses(cpu);
}

}  // namespace

TEST(TrainerGpu, Bf16RunTracksTheCpuAndItsCheckpointResumesOnTheCpu) {
  const auto run = anvil::testing::make_tiny_run("trainer_gpu_bf16");
  const RunConfig cfg = load_run_config(run.config, {"run.device=cuda"});
  ASSERT_EQ(cfg.run.precision, "bf16");
  Trainer gpu(cfg, TrainerMode::Quiet);
  for (Param* p : gpu.model().params()) {
    EXPECT_TRUE(p->value.device().is_cuda() && p->value.dtype() == DType::BF16) << p->name << " "
                                                                                 << p->value.describe();
    ASSERT_TRUE(p->master.defined()) << p->name;
    EXPECT_TRUE(p->master.device().is_cuda() && p->master.dtype() == DType::F32) << p->name;
    EXPECT_TRUE(p->grad.device().is_cuda() && p->grad.dtype() == DType::F32) << p->name;
  }
  gpu.train();
  const std::vector<double> dev = losses(gpu), ref = cpu_losses("trainer_gpu_bf16_ref");
  ASSERT_EQ(dev.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_TRUE(std::isfinite(dev[i])) << "step " << i + 1;
    EXPECT_NEAR(dev[i], ref[i], 2e-2 * ref[i]) << "step " << i + 1;
  }
  EXPECT_NEAR(dev.front() - dev.back(), ref.front() - ref.back(), 0.2) << "bf16 learned differently";
  EXPECT_GT(gpu.history().back().peak_mb, 0.0);  // the CUDA allocator's high-water mark
  for (Param* p : gpu.model().params()) {  // the values are the masters rounded, after every step
    const Tensor m = host_f32(p->master), v = host_f32(p->value);
    EXPECT_EQ(max_abs_diff(v, m.to(DType::BF16).to(DType::F32)), 0.0) << p->name;
  }
  const double gpu_val = gpu.evaluate(2);
  const std::string sample = gpu.sample("This License", 8);  // KV-cached decoding on the GPU
  EXPECT_GT(sample.size(), std::string("This License").size());

  // The checkpoint holds the f32 masters: an fp32 CPU trainer resumes at the same step and
  // scores the same weights (in f32 rather than bf16).
  Trainer resumed(load_run_config(run.config, {"run.device=cpu", "run.precision=fp32"}), TrainerMode::Quiet);
  EXPECT_EQ(resumed.step(), gpu.step());
  EXPECT_NEAR(resumed.evaluate(2), gpu_val, 2e-2 * gpu_val);
  for (Param* p : resumed.model().params())
    EXPECT_EQ(max_abs_diff(p->value, host_f32(gpu.model().param(p->name).master)), 0.0) << p->name;
}

TEST(TrainerGpu, Fp32RunMatchesTheCpu) {
  const auto run = anvil::testing::make_tiny_run("trainer_gpu_fp32");
  Trainer gpu(load_run_config(run.config, {"run.device=cuda", "run.precision=fp32"}), TrainerMode::Quiet);
  for (Param* p : gpu.model().params()) {
    EXPECT_TRUE(p->value.device().is_cuda() && p->value.dtype() == DType::F32) << p->name;
    EXPECT_FALSE(p->master.defined()) << p->name << ": f32 values are their own masters";
  }
  gpu.train();
  const std::vector<double> dev = losses(gpu), ref = cpu_losses("trainer_gpu_fp32_ref");
  ASSERT_EQ(dev.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(dev[i], ref[i], 1e-3 * ref[i]) << "step " << i + 1;
}
