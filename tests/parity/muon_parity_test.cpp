// Muon + auxiliary AdamW (HybridOptimizer) against a PyTorch reference written from
// ALGORITHMS.md 2a (tests/parity/torch_muon.py): ten fixed gradients on a 64x48 and
// a 48x64 hidden matrix, an lm_head (AdamW side) and a norm vector, with a changing lr.
//
// Tolerance: both sides run Newton–Schulz in fp32, so they differ only by summation
// order in sgemm vs torch's matmul. NS5 amplifies a relative perturbation of the small
// singular directions by at most 3.4445 per iteration (the slope at 0), about 500x over
// five, so O differs by ~1e-5 of its scale and the params (|lr * O| << |W|) by ~1e-6;
// 1e-5 relative per step leaves a margin. Because |lr * O| << |W|, the displacement
// W_t - W_0 is also compared on its own scale (1e-4), so an error of 0.1% in the
// update itself (scale, decay, momentum form) cannot hide under the params' size.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>

#include "kernels/elementwise.h"
#include "optim/hybrid.h"
#include "optim/schedule.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

struct Errors {
  double fp32 = 0, fp64 = 0, state = 0, displacement = 0;
};

Errors run_against_torch(const MuonConfig& muon, const HybridConfig& hybrid, double peak_lr, const std::string& tag) {
  std::vector<Param> params;
  params.emplace_back("a.weight", random_tensor({64, 48}, 1, -0.5f, 0.5f), ParamRole::Matrix);
  params.emplace_back("b.weight", random_tensor({48, 64}, 2, -0.5f, 0.5f), ParamRole::Matrix);
  params.emplace_back("lm_head.weight", random_tensor({40, 48}, 3, -0.5f, 0.5f), ParamRole::Matrix);
  params.emplace_back("norm.weight", random_tensor({48}, 4), ParamRole::Vector);
  std::vector<Param*> ptrs;
  for (Param& p : params) ptrs.push_back(&p);
  auto opt = make_muon_hybrid(ptrs, muon, hybrid);
  EXPECT_EQ(opt->routing()[0].group, ParamGroup::Matrix);
  EXPECT_EQ(opt->routing()[1].group, ParamGroup::Matrix);
  EXPECT_EQ(opt->routing()[2].group, ParamGroup::AdamW);
  EXPECT_EQ(opt->routing()[3].group, ParamGroup::AdamW);
  ScheduleConfig sched{"cosine", peak_lr, 3, 10, 0.1, 0.2};

  const int steps = 10;
  TensorMap inputs;
  for (Param& p : params) {
    inputs["param." + p.name] = p.value.clone();
    inputs["wd." + p.name] = Tensor::full({1}, opt->adamw().decay_for(p));
  }
  std::vector<float> lrs;
  std::vector<std::vector<Tensor>> after(steps);
  for (int s = 0; s < steps; ++s) {
    const double lr = learning_rate(sched, s);
    lrs.push_back(static_cast<float>(lr));
    for (size_t i = 0; i < params.size(); ++i) {
      // Gradient scale changes per step, so the momentum mix (not just its direction) matters.
      const float scale = 0.1f + 0.3f * static_cast<float>((s * 7 + i) % 5);
      Tensor g = random_tensor(params[i].value.shape(), 200 + 10 * s + i, -scale, scale);
      params[i].grad.copy_(g);
      inputs["grad." + std::to_string(s) + "." + params[i].name] = g;
    }
    opt->step(lr);
    for (Param& p : params) after[s].push_back(p.value.clone());
  }
  const kernels::NewtonSchulzConfig& ns = muon.ns;
  inputs["lr"] = Tensor::from_vector(lrs, {steps});
  inputs["muon"] = Tensor::from_vector(
      std::vector<float>{static_cast<float>(muon.momentum), muon.nesterov ? 1.0f : 0.0f,
                         static_cast<float>(muon.weight_decay), muon.scale == MuonScale::Moonlight ? 1.0f : 0.0f,
                         muon.momentum_form == MuonMomentum::Sum ? 1.0f : 0.0f, static_cast<float>(ns.steps),
                         static_cast<float>(ns.a), static_cast<float>(ns.b), static_cast<float>(ns.c),
                         static_cast<float>(ns.eps)},
      {10});
  inputs["adamw"] = Tensor::from_vector(
      std::vector<float>{static_cast<float>(hybrid.adamw.beta1), static_cast<float>(hybrid.adamw.beta2),
                         static_cast<float>(hybrid.adamw.eps), static_cast<float>(hybrid.adamw_lr_ratio)},
      {4});
  const std::string in = ::testing::TempDir() + "/muon_" + tag + "_in.anvt";
  const std::string out = ::testing::TempDir() + "/muon_" + tag + "_out.anvt";
  write_tensor_file(in, inputs);
  run_torch_script("tests/parity/torch_muon.py", in + " " + out);
  const TensorMap ref = read_tensor_file(out);

  Errors e;
  for (int s = 0; s < steps; ++s)
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string key = std::to_string(s) + "." + params[i].name;
      const double err = max_rel_diff(after[s][i], ref.at("param." + key));
      EXPECT_LE(err, 1e-5) << tag << " step " << s << " " << params[i].name;
      e.fp32 = std::max(e.fp32, err);
      e.fp64 = std::max(e.fp64, max_rel_diff(after[s][i], ref.at("param64." + key)));
      // The distance travelled, W_s - W_0, compared on its own scale: a small lr makes the
      // params barely move, and this keeps a 0.1% error in the update visible. Floor: each
      // step rounds W on both sides (half an ulp, 2^-24 of |W|), which no update can beat.
      Tensor moved = after[s][i].clone(), moved_ref = ref.at("param." + key).clone();
      kernels::axpy(-1.0f, inputs.at("param." + params[i].name), moved);
      kernels::axpy(-1.0f, inputs.at("param." + params[i].name), moved_ref);
      const double scale = kernels::max_abs(moved_ref);
      const double rounding = 2.0 * (s + 1) * std::ldexp(kernels::max_abs(after[s][i]), -24);
      EXPECT_LE(max_abs_diff(moved, moved_ref), 1e-4 * scale + rounding)
          << tag << " step " << s << " " << params[i].name << " displacement";
      if (s == steps - 1) e.displacement = std::max(e.displacement, max_rel_diff(moved, moved_ref));
    }
  // fp32 NS against an all-fp64 run: the drift ALGORITHMS.md warns about, loosely bounded.
  EXPECT_LE(e.fp64, 1e-4) << tag;
  for (const NamedTensor& t : opt->state()) {
    const double err = max_rel_diff(t.tensor, ref.at("state." + t.name));
    EXPECT_LE(err, 1e-5) << tag << " " << t.name;
    e.state = std::max(e.state, err);
  }
  EXPECT_EQ(opt->state().size(), 2u + 2u * 2u);
  EXPECT_EQ(opt->step_count(), steps);
  std::cout << "[" << tag << "] max rel error vs torch fp32: params " << e.fp32 << ", final displacement "
            << e.displacement << ", state " << e.state << "; vs torch fp64: params " << e.fp64 << "\n";
  return e;
}

}  // namespace

TEST(MuonParity, KellerDefaultsWithDecayMatchTorchEveryStep) {
  MuonConfig muon;  // ema momentum, Nesterov, NS5, Keller scale
  muon.weight_decay = 0.01;
  HybridConfig hybrid;  // AdamW (0.9, 0.95), eps 1e-10, lr ratio 0.015
  hybrid.adamw.weight_decay = 0.1;  // reaches the Matrix-role head only (AdamWConfig's role rule)
  run_against_torch(muon, hybrid, 0.02, "keller");
}

TEST(MuonParity, MoonlightScaleSumMomentumWithoutNesterovMatchTorchEveryStep) {
  MuonConfig muon;
  muon.scale = MuonScale::Moonlight;
  muon.momentum_form = MuonMomentum::Sum;
  muon.nesterov = false;
  muon.weight_decay = 0.1;
  muon.ns.steps = 4;
  HybridConfig hybrid;
  hybrid.adamw_lr_ratio = 1.0;  // Moonlight shares one lr and wd between the groups
  hybrid.adamw.weight_decay = 0.1;
  hybrid.adamw.decay_vectors = true;
  run_against_torch(muon, hybrid, 1e-3, "moonlight");
}
