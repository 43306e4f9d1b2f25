// run.device: cuda at start-up. Without a visible GPU the trainer refuses and says why
// (cuda_unavailable_reason) and how to go on; with one it places the model there in bf16 with
// f32 masters (the training itself is checked against the CPU in tests/gpu/trainer_gpu_test.cpp).
// A build without the CUDA backend refuses the config instead.
#include <gtest/gtest.h>

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

TEST(Device, CudaPlacesTheModelOrSaysWhyNot) {
  const auto run = anvil::testing::make_tiny_run("device_cuda");
  const std::vector<std::string> on_cuda = {"run.device=cuda"};
#ifndef ANVIL_WITH_CUDA
  const std::string msg = anvil::testing::error_of([&] { load_run_config(run.config, on_cuda); });
  EXPECT_TRUE(contains(msg, "run.device: cuda, but this build of anvil has no CUDA backend")) << msg;
#else
  const RunConfig cfg = load_run_config(run.config, on_cuda);
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
#endif
}
