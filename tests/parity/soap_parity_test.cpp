// SOAP against a float64 PyTorch SOAP written from ALGORITHMS.md 2b: ten calls with
// fixed gradients on a 64x48 and a 48x64 matrix (and a vector: SOAP's plain-Adam
// path), a changing learning rate, and basis refreshes at t = 3, 6, 9.
#include <gtest/gtest.h>

#include <cstdio>

#include "optim/schedule.h"
#include "optim/soap.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;

TEST(SoapParity, MatchesFloat64TorchEveryCall) {
  std::vector<Param> params;
  params.emplace_back("a.weight", random_tensor({64, 48}, 1, -0.25f, 0.25f), ParamRole::Matrix);
  params.emplace_back("b.weight", random_tensor({48, 64}, 2, -0.25f, 0.25f), ParamRole::Matrix);
  params.emplace_back("norm.weight", random_tensor({48}, 3), ParamRole::Vector);
  std::vector<Param*> ptrs;
  for (Param& p : params) ptrs.push_back(&p);
  SoapConfig cfg;  // the reference's defaults, float-representable so both sides read the same numbers
  cfg.beta1 = 0.95f; cfg.beta2 = 0.95f; cfg.eps = 1e-8f; cfg.weight_decay = 0.1f;  // large enough that decay-before would show (lr*wd = 1e-3 of the update)
  cfg.precondition_frequency = 3;  // refreshes at t = 3, 6, 9 within ten calls
  Soap opt(ptrs, cfg);
  ScheduleConfig sched{"cosine", 1e-2, 3, 10, 0.1, 0.2};

  const int calls = 10;
  TensorMap inputs;
  std::vector<float> lrs;
  for (Param& p : params) {
    inputs["param." + p.name] = p.value.clone();
    inputs["wd." + p.name] = Tensor::full({1}, opt.decay_for(p));
  }
  std::vector<std::vector<Tensor>> after(calls);
  for (int c = 0; c < calls; ++c) {
    const double lr = static_cast<float>(learning_rate(sched, c));
    lrs.push_back(static_cast<float>(lr));
    for (size_t i = 0; i < params.size(); ++i) {
      Tensor g = random_tensor(params[i].value.shape(), 100 + 10 * c + i);
      params[i].grad.copy_(g);
      inputs["grad." + std::to_string(c) + "." + params[i].name] = g;
    }
    opt.step(lr);
    for (Param& p : params) after[c].push_back(p.value.clone());
  }
  inputs["lr"] = Tensor::from_vector(lrs, {calls});
  inputs["hyper"] = Tensor::from_vector(std::vector<float>{0.95f, 0.95f, -1.0f, 1e-8f, 3.0f, 10000.0f}, {6});
  const std::string in = ::testing::TempDir() + "/soap_in.anvt", out = ::testing::TempDir() + "/soap_out.anvt";
  write_tensor_file(in, inputs);
  run_torch_script("tests/parity/torch_soap.py", in + " " + out);
  const TensorMap ref = read_tensor_file(out);
  for (size_t i = 0; i < params.size(); ++i) {
    double worst_param = 0, worst_update = 0;
    Tensor prev_ref = inputs.at("param." + params[i].name), prev = prev_ref;
    for (int c = 0; c < calls; ++c) {
      const Tensor& r = ref.at("param." + std::to_string(c) + "." + params[i].name);
      const double err = max_rel_diff(after[c][i], r);
      EXPECT_LE(err, 1e-5) << "call " << c << " " << params[i].name;
      worst_param = std::max(worst_param, err);
      if (c == 0) {
        EXPECT_EQ(max_abs_diff(after[c][i], prev), 0.0) << "the first call must not move " << params[i].name;
      } else {
        // The update itself (W_t - W_{t-1}, each side from its own trajectory).
        const auto a = after[c][i].to_vector(), pa = prev.to_vector(), b = r.to_vector(), pb = prev_ref.to_vector();
        std::vector<float> ua(a.size()), ub(b.size());
        for (size_t k = 0; k < a.size(); ++k) { ua[k] = a[k] - pa[k]; ub[k] = static_cast<float>(double(b[k]) - pb[k]); }
        const double uerr = max_rel_diff(Tensor::from_vector(ua, {int64_t(ua.size())}),
                                         Tensor::from_vector(ub, {int64_t(ub.size())}));
        EXPECT_LE(uerr, 3e-4) << "update at call " << c << " " << params[i].name;
        worst_update = std::max(worst_update, uerr);
      }
      prev = after[c][i];
      prev_ref = r;
    }
    std::printf("soap parity %-12s max rel param error %.3g, max rel update error %.3g\n", params[i].name.c_str(),
                worst_param, worst_update);
  }
  EXPECT_EQ(opt.step_count(), calls);
}
