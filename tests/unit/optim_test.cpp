// AdamW's documented numeric check, weight-decay roles, schedules and clipping.
#include <gtest/gtest.h>

#include <cmath>

#include "optim/adamw.h"
#include "optim/schedule.h"
#include "tests/support/reference.h"

using namespace anvil;

TEST(AdamW, AlgorithmsNumericCheck) {
  // ALGORITHMS.md section 3: theta=1, g=0.5, lr=0.1, wd=0.01, betas (0.9, 0.999) -> 0.899000002.
  Param p("w", Tensor::full({1}, 1.0), ParamRole::Matrix);
  p.grad.fill_(0.5);
  AdamWConfig cfg;
  cfg.beta1 = 0.9; cfg.beta2 = 0.999; cfg.eps = 1e-8; cfg.weight_decay = 0.01;
  AdamW opt({&p}, cfg);
  opt.step(0.1);
  EXPECT_NEAR(p.value.item(), 0.899000002, 1e-7);
}

TEST(AdamW, DecayFollowsRolesAndFrozenParamsHaveNoState) {
  Param m("m", Tensor::full({2, 2}, 1.0), ParamRole::Matrix);
  Param e("e", Tensor::full({2, 2}, 1.0), ParamRole::Embedding);
  Param v("v", Tensor::full({2}, 1.0), ParamRole::Vector);
  Param f("f", Tensor::full({2}, 1.0), ParamRole::Matrix);
  f.set_trainable(false);
  for (Param* p : {&m, &e, &v}) p->grad.zero_();
  AdamWConfig cfg;
  cfg.weight_decay = 0.5;
  AdamW opt({&m, &e, &v, &f}, cfg);
  EXPECT_EQ(opt.state().size(), 6u);
  opt.step(0.1);  // zero gradients: only decay moves the params
  EXPECT_NEAR(m.value.item_at({0, 0}), 1.0 - 0.1 * 0.5, 1e-7);
  EXPECT_EQ(e.value.item_at({0, 0}), 1.0);
  EXPECT_EQ(v.value.item_at({0}), 1.0);
  EXPECT_EQ(f.value.item_at({0}), 1.0);
}

TEST(Schedule, ShapesAgainstClosedForms) {
  ScheduleConfig s{"cosine", 1.0, 10, 110, 0.1, 0.2};
  EXPECT_DOUBLE_EQ(learning_rate(s, 0), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(s, 9), 1.0);
  EXPECT_NEAR(learning_rate(s, 60), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * 0.5)), 1e-12);
  EXPECT_NEAR(learning_rate(s, 110), 0.1, 1e-12);
  s.kind = "linear";
  EXPECT_NEAR(learning_rate(s, 35), 1.0 - 0.9 * 0.25, 1e-12);
  s.kind = "wsd";  // decays over the last 22 steps (ceil(0.2 * 110))
  EXPECT_DOUBLE_EQ(learning_rate(s, 87), 1.0);
  EXPECT_NEAR(learning_rate(s, 99), 1.0 - 0.9 * (11.0 / 22.0), 1e-12);
  s.kind = "constant";
  EXPECT_DOUBLE_EQ(learning_rate(s, 100), 1.0);
  s.kind = "bogus";
  EXPECT_THROW(validate_schedule(s), Error);
  ScheduleConfig w{"cosine", 1.0, 200, 100, 0.1, 0.2};
  EXPECT_THROW(validate_schedule(w), Error);
}

TEST(ClipGradNorm, ScalesToTheLimitAndReportsTheNorm) {
  Param a("a", Tensor::zeros({3}), ParamRole::Vector), b("b", Tensor::zeros({2}), ParamRole::Vector);
  a.grad.copy_(Tensor::from_vector(std::vector<float>{3, 0, 0}, {3}));
  b.grad.copy_(Tensor::from_vector(std::vector<float>{0, 4}, {2}));
  EXPECT_NEAR(clip_grad_norm({&a, &b}, 1.0), 5.0, 1e-12);
  EXPECT_NEAR(global_grad_norm({&a, &b}), 1.0, 1e-5);
  EXPECT_NEAR(a.grad.item_at({0}), 0.6, 1e-5);
  EXPECT_NEAR(clip_grad_norm({&a, &b}, 10.0), 1.0, 1e-5);  // under the limit: untouched
  EXPECT_NEAR(a.grad.item_at({0}), 0.6, 1e-5);
}
