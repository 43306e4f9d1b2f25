// A training run on a GPU against the CPU f32 run of the same config, step for step (the gpu
// workload tests: Medusa, quantized LoRA): `make(label, sets)` builds the run's config from
// --set-style overrides; the GPU run adds run.device=cuda and run.precision. Every step's loss, and
// each named task metric, must agree within `tol` relative.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "tests/support/distill_fixture.h"
#include "trainer/trainer.h"

namespace anvil::testing {

using MakeRunConfig = std::function<RunConfig(const std::string& label, const std::vector<std::string>& sets)>;

inline void expect_gpu_run_tracks_cpu(const MakeRunConfig& make, const std::vector<std::string>& sets,
                                      const std::string& precision, double tol,
                                      const std::vector<std::string>& metrics = {}) {
  std::vector<std::string> gpu_sets = sets;
  gpu_sets.push_back("run.device=cuda");
  gpu_sets.push_back("run.precision=" + precision);
  Trainer gpu(make("gpu_" + precision, gpu_sets), TrainerMode::Quiet);
  gpu.train();
  Trainer cpu(make("cpu_" + precision, sets), TrainerMode::Quiet);
  cpu.train();
  const auto& g = gpu.history();
  const auto& c = cpu.history();
  ASSERT_EQ(g.size(), c.size());
  for (size_t i = 0; i < c.size(); ++i) {
    ASSERT_TRUE(std::isfinite(g[i].loss)) << "step " << i + 1;
    EXPECT_NEAR(g[i].loss, c[i].loss, tol * std::fabs(c[i].loss)) << "step " << i + 1;
    for (const std::string& name : metrics)
      EXPECT_NEAR(metric(g[i], name), metric(c[i], name), tol * metric(c[i], name)) << name << " step " << i + 1;
  }
}

}  // namespace anvil::testing
