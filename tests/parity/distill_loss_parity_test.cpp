// The distillation losses (kernels/distill_loss.h, models/distill_loss.h) against float64
// torch autograd (tests/parity/torch_distill.py): every divergence at T = 1 and T != 1, with
// top-k, top-p and both, on random logits with some ignored rows — per-row loss, acceptance,
// the student-logit gradient, and the module's mean, acceptance sum and scaled backward.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/distill_loss.h"
#include "kernels/elementwise.h"
#include "models/distill_loss.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr int64_t kN = 7, kV = 50;
constexpr double kLogitRange = 3.0;

struct Case {
  DivergenceKind kind;
  double temperature;
  int64_t top_k;
  double top_p;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (DivergenceKind k : {DivergenceKind::ForwardKL, DivergenceKind::ReverseKL, DivergenceKind::TVD,
                           DivergenceKind::JSD}) {
    out.push_back({k, 1.0, 0, 1.0});
    out.push_back({k, 0.7, 0, 1.0});
    if (k == DivergenceKind::ReverseKL) continue;  // infinite with filters (refused by the spec)
    out.push_back({k, 1.5, 5, 1.0});
    out.push_back({k, 0.8, 0, 0.8});
    out.push_back({k, 1.3, 12, 0.9});
  }
  return out;
}

// f32 against float64: summing a row's V terms costs up to V ulps of its O(1) total, and each
// log-probability carries a few ulps of |z| / T (at most kLogitRange / T, plus the normaliser).
double tolerance(double temperature) {
  return std::numeric_limits<float>::epsilon() * (kV + 8.0 * (1.0 + kLogitRange / temperature));
}

}  // namespace

TEST(DistillLossParity, MatchesTorchAutograd) {
  const Tensor student = random_tensor({kN, kV}, 71, -kLogitRange, kLogitRange);
  // The teacher near the student, so the divergences are neither 0 nor saturated.
  Tensor teacher = random_tensor({kN, kV}, 72, -2.0f, 2.0f);
  kernels::axpy(0.8f, student, teacher);
  Tensor targets = random_ids({kN}, static_cast<int32_t>(kV), 73);
  targets.data<int32_t>()[2] = -100;
  targets.data<int32_t>()[5] = -100;
  const std::vector<Case> all = cases();
  std::vector<float> rows;
  for (const Case& c : all)
    for (double v : {static_cast<double>(c.kind), c.temperature, static_cast<double>(c.top_k), c.top_p})
      rows.push_back(static_cast<float>(v));
  const std::string in = ::testing::TempDir() + "/distill_in.anvt", out = ::testing::TempDir() + "/distill_out.anvt";
  write_tensor_file(in, {{"student", student}, {"teacher", teacher}, {"targets", targets},
                         {"cases", Tensor::from_vector(rows, {static_cast<int64_t>(all.size()), 4})}});
  run_torch_script("tests/parity/torch_distill.py", in + " " + out);
  const TensorMap ref = read_tensor_file(out);

  for (size_t ci = 0; ci < all.size(); ++ci) {
    const Case& c = all[ci];
    const std::string name = divergence_name(c.kind) + " T=" + std::to_string(c.temperature) +
                             " top_k=" + std::to_string(c.top_k) + " top_p=" + std::to_string(c.top_p);
    const double tol = tolerance(c.temperature);
    const Tensor& ref_loss = ref.at("loss." + std::to_string(ci));
    const Tensor& ref_acc = ref.at("acceptance." + std::to_string(ci));
    const Tensor& ref_grad = ref.at("grad." + std::to_string(ci));

    // The kernel, row by row.
    DistillSpec spec{c.kind, c.temperature, c.top_k, c.top_p};
    kernels::DistillArgs args;
    args.kind = static_cast<kernels::Divergence>(c.kind);
    args.temperature = static_cast<float>(c.temperature);
    if (c.top_k > 0 || c.top_p < 1) {
      args.teacher_threshold = Tensor::empty({kN});
      args.student_threshold = Tensor::empty({kN});
      kernels::distill_filter_threshold(teacher, args.temperature, c.top_k, c.top_p, args.teacher_threshold);
      kernels::distill_filter_threshold(student, args.temperature, c.top_k, c.top_p, args.student_threshold);
    }
    Tensor grad = student.clone(), losses = Tensor::empty({kN}), acceptance = Tensor::empty({kN});
    kernels::distill_forward(grad, teacher, targets, args, losses, acceptance, true);
    EXPECT_LE(max_abs_diff(losses, ref_loss), tol) << name;
    EXPECT_LE(max_abs_diff(acceptance, ref_acc), tol) << name;
    EXPECT_LE(max_abs_diff(grad, ref_grad), tol) << name;
    EXPECT_GT(kernels::max_abs(ref_grad), 100 * tol) << name << ": the reference gradient is too small to test";

    // The module: the mean over the scored rows, the acceptance sum, backward's scale.
    DistillationLoss loss(spec, nullptr, 0, kV, nullptr);
    Cache cache;
    Tensor logits = student.clone();
    const DistillationLoss::Result r = loss.forward(logits, teacher, targets, cache);
    double ref_sum = 0, ref_acc_sum = 0;
    for (int64_t i = 0; i < kN; ++i) {
      ref_sum += ref_loss.data<float>()[i];
      ref_acc_sum += ref_acc.data<float>()[i];
    }
    EXPECT_EQ(r.tokens, kN - 2) << name;
    EXPECT_NEAR(r.loss, ref_sum / (kN - 2), tol) << name;
    EXPECT_NEAR(r.acceptance_sum, ref_acc_sum, kN * tol) << name;
    const Tensor d = loss.backward(cache, 2.0f, 10);
    EXPECT_TRUE(d.same_storage(logits)) << name << ": backward works in place";
    Tensor want = ref_grad.clone();
    kernels::scale_inplace(want, 0.2f);
    EXPECT_LE(max_abs_diff(d, want), 0.2 * tol) << name;
  }
}
