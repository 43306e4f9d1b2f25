// run.device: cuda end to end. Without a visible GPU the trainer refuses at start-up and says
// why (cuda_unavailable_reason); with one, the tiny Llama trains in bf16 with f32 masters, its
// losses follow the CPU f32 run's within bf16 rounding, and its checkpoint (f32 masters)
// resumes on the CPU. A build without the CUDA backend refuses the config instead.
#include <gtest/gtest.h>

#include <cmath>

#include "core/cuda_device.h"
#include "tests/support/reference.h"
#include "tests/support/tiny_run.h"
#include "trainer/trainer.h"

using namespace anvil;

namespace {
bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}
}  // namespace

TEST(Device, CudaTrainsInBf16OrSaysWhyNot) {
  const auto gpu_run = anvil::testing::make_tiny_run("device_cuda");
  const std::vector<std::string> on_cuda = {"run.device=cuda"};
#ifndef ANVIL_WITH_CUDA
  const std::string msg = anvil::testing::error_of([&] { load_run_config(gpu_run.config, on_cuda); });
  EXPECT_TRUE(contains(msg, "run.device: cuda, but this build of anvil has no CUDA backend")) << msg;
#else
  const RunConfig cfg = load_run_config(gpu_run.config, on_cuda);
  EXPECT_EQ(cfg.run.precision, "bf16");
  if (cuda_device_count() == 0) {
    const std::string msg = anvil::testing::error_of([&] { Trainer t(cfg, TrainerMode::Quiet); });
    EXPECT_TRUE(contains(msg, "run.device: cuda, but " + cuda_unavailable_reason())) << msg;
    EXPECT_TRUE(contains(msg, "run.device: cpu")) << msg;  // the fix
    return;
  }
  Trainer gpu(cfg, TrainerMode::Quiet);
  for (Param* p : gpu.model().params()) {
    EXPECT_TRUE(p->value.device().is_cuda() && p->value.dtype() == DType::BF16) << p->name << " "
                                                                                 << p->value.describe();
    ASSERT_TRUE(p->master.defined()) << p->name;
    EXPECT_EQ(p->master.dtype(), DType::F32) << p->name;
    EXPECT_EQ(p->grad.dtype(), DType::F32) << p->name;
  }
  gpu.train();

  const auto cpu_run = anvil::testing::make_tiny_run("device_cpu");
  Trainer cpu(load_run_config(cpu_run.config), TrainerMode::Quiet);
  cpu.train();
  ASSERT_EQ(gpu.history().size(), cpu.history().size());
  for (size_t i = 0; i < cpu.history().size(); ++i)
    EXPECT_NEAR(gpu.history()[i].loss, cpu.history()[i].loss, 0.02 * cpu.history()[i].loss) << "step " << i + 1;
  EXPECT_LT(gpu.history().back().loss, gpu.history().front().loss - 0.5);  // it learned
  const double gpu_val = gpu.evaluate(2);

  // The GPU checkpoint holds the f32 masters: an fp32 CPU trainer resumes it and scores the
  // same weights (computed in f32 instead of bf16).
  Trainer resumed(load_run_config(gpu_run.config, {"run.device=cpu", "run.precision=fp32"}), TrainerMode::Quiet);
  EXPECT_EQ(resumed.step(), gpu.step());
  EXPECT_NEAR(resumed.evaluate(2), gpu_val, 0.02 * gpu_val);
#endif
}
