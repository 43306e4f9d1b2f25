// AdamW against torch.optim.AdamW: ten steps of fixed gradients on a 64x48 and a
// 48x64 matrix, an embedding and a vector, with a changing learning rate.
#include <gtest/gtest.h>

#include "core/rng.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;

TEST(AdamWParity, MatchesTorchEveryStep) {
  std::vector<Param> params;
  params.emplace_back("a.weight", random_tensor({64, 48}, 1), ParamRole::Matrix);
  params.emplace_back("b.weight", random_tensor({48, 64}, 2), ParamRole::Matrix);
  params.emplace_back("emb.weight", random_tensor({30, 8}, 3), ParamRole::Embedding);
  params.emplace_back("norm.weight", random_tensor({48}, 4), ParamRole::Vector);
  std::vector<Param*> ptrs;
  for (Param& p : params) ptrs.push_back(&p);
  AdamWConfig cfg;
  cfg.beta1 = 0.9; cfg.beta2 = 0.95; cfg.eps = 1e-8; cfg.weight_decay = 0.1; cfg.decay_embeddings = true;
  AdamW opt(ptrs, cfg);
  ScheduleConfig sched{"cosine", 3e-2, 3, 10, 0.1, 0.2};

  const int steps = 10;
  TensorMap inputs;
  std::vector<float> lrs;
  for (Param& p : params) {
    inputs["param." + p.name] = p.value.clone();
    inputs["wd." + p.name] = Tensor::full({1}, opt.decay_for(p));
  }
  std::vector<std::vector<Tensor>> after(steps);
  for (int s = 0; s < steps; ++s) {
    const double lr = learning_rate(sched, s);
    lrs.push_back(static_cast<float>(lr));
    for (size_t i = 0; i < params.size(); ++i) {
      // Gradients of varying scale, some steps sparse, so bias correction and eps both matter.
      Tensor g = random_tensor(params[i].value.shape(), 100 + 10 * s + i, -1.0f, 1.0f);
      if (s % 4 == 3) g.fill_(1e-9);
      params[i].grad.copy_(g);
      inputs["grad." + std::to_string(s) + "." + params[i].name] = g;
    }
    opt.step(lr);
    for (Param& p : params) after[s].push_back(p.value.clone());
  }
  inputs["lr"] = Tensor::from_vector(lrs, {steps});
  inputs["hyper"] = Tensor::from_vector(std::vector<float>{0.9f, 0.95f, 1e-8f}, {3});
  const std::string in = ::testing::TempDir() + "/adamw_in.anvt", out = ::testing::TempDir() + "/adamw_out.anvt";
  write_tensor_file(in, inputs);
  run_torch_script("tests/parity/torch_adamw.py", in + " " + out);
  const TensorMap ref = read_tensor_file(out);
  for (int s = 0; s < steps; ++s)
    for (size_t i = 0; i < params.size(); ++i) {
      const double err = max_rel_diff(after[s][i], ref.at("param." + std::to_string(s) + "." + params[i].name));
      EXPECT_LE(err, 1e-6) << "step " << s << " " << params[i].name;
    }
  EXPECT_EQ(opt.step_count(), steps);
  EXPECT_EQ(opt.state_bytes(), 2 * (64 * 48 * 2 + 30 * 8 + 48) * sizeof(float));
}
