// Distillation losses (kernels/distill_loss.h, models/distill_loss.h) on the CPU: the
// ALGORITHMS.md §7 acceptance vector, the gradient against central finite differences for
// every divergence (TVD away from its kinks), the filter thresholds against
// eval/generate.h's sampling_distribution, the forward-only path, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "eval/generate.h"
#include "kernels/cpu/common.h"
#include "kernels/distill_loss.h"
#include "models/distill_loss.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr DivergenceKind kAll[] = {DivergenceKind::ForwardKL, DivergenceKind::ReverseKL, DivergenceKind::TVD,
                                   DivergenceKind::JSD};

kernels::DistillArgs args_for(DivergenceKind kind, double temperature) {
  kernels::DistillArgs a;
  a.kind = static_cast<kernels::Divergence>(kind);
  a.temperature = static_cast<float>(temperature);
  return a;
}

// Runs the full-row kernel; returns the per-row losses (and the gradient in `student` when asked).
Tensor row_losses(Tensor& student, const Tensor& teacher, const Tensor& targets, const kernels::DistillArgs& a,
                  bool write_grad, Tensor* acceptance = nullptr) {
  const int64_t N = student.size(0);
  Tensor losses = Tensor::empty({N}), acc = Tensor::empty({N});
  kernels::distill_forward(student, teacher, targets, a, losses, acc, write_grad);
  if (acceptance) *acceptance = acc;
  return losses;
}

std::vector<double> softmax(const float* z, int64_t V, double temperature) {
  std::vector<double> p(static_cast<size_t>(V));
  double m = -std::numeric_limits<double>::infinity(), s = 0;
  for (int64_t j = 0; j < V; ++j) m = std::max(m, z[j] / temperature);
  for (int64_t j = 0; j < V; ++j) s += p[j] = std::exp(z[j] / temperature - m);
  for (double& v : p) v /= s;
  return p;
}

// Whether some |p_j − q_j| <= margin q_j (p: the teacher filtered by a's threshold).
bool near_a_kink(const Tensor& student, const Tensor& teacher, const kernels::DistillArgs& a, double margin) {
  const int64_t N = student.size(0), V = student.size(1);
  for (int64_t i = 0; i < N; ++i) {
    const float* zp = teacher.data<float>() + i * V;
    const std::vector<double> q = softmax(student.data<float>() + i * V, V, a.temperature);
    const std::vector<double> full_p = softmax(zp, V, a.temperature);
    const float th = a.teacher_threshold.defined() ? a.teacher_threshold.data<float>()[i] : -INFINITY;
    double kept_mass = 0;
    for (int64_t j = 0; j < V; ++j) kept_mass += zp[j] >= th ? full_p[j] : 0;
    for (int64_t j = 0; j < V; ++j) {
      const double p = zp[j] >= th ? full_p[j] / kept_mass : 0;
      if (std::fabs(p - q[j]) <= margin * q[j]) return true;
    }
  }
  return false;
}

}  // namespace

TEST(DistillLoss, AcceptanceVectorOfAlgorithms7) {
  // z_p = [2, 1, 0], z_q = [1.5, 1.2, 0]: α_T = 0.7587, 0.8439, 0.9221 at T = 0.5, 1, 2 (4 digits).
  const Tensor teacher = Tensor::from_vector(std::vector<float>{2, 1, 0}, {1, 3});
  const Tensor targets = Tensor::from_vector(std::vector<int32_t>{0}, {1});
  const double want[] = {0.7587, 0.8439, 0.9221};
  const double temps[] = {0.5, 1.0, 2.0};
  for (int i = 0; i < 3; ++i) {
    Tensor student = Tensor::from_vector(std::vector<float>{1.5f, 1.2f, 0}, {1, 3}), acc;
    const Tensor tvd = row_losses(student, teacher, targets, args_for(DivergenceKind::TVD, temps[i]), false, &acc);
    EXPECT_NEAR(acc.item(), want[i], 5e-5) << "T = " << temps[i];
    EXPECT_NEAR(tvd.item(), 1.0 - want[i], 5e-5) << "T = " << temps[i] << ": α = 1 − tvd unfiltered";
    // Through the module: the acceptance sum over the one scored token.
    DistillationLoss loss(DistillSpec{DivergenceKind::TVD, temps[i], 0, 1.0}, nullptr, 0, 3, nullptr);
    Cache c;
    EXPECT_NEAR(loss.forward(student, teacher, targets, c, -100, false).acceptance_sum, want[i], 5e-5);
  }
}

TEST(DistillLoss, GradientMatchesFiniteDifferences) {
  const int64_t N = 3, V = 16;
  const Tensor teacher = random_tensor({N, V}, 31, -2.0f, 2.0f);
  const Tensor targets = Tensor::from_vector(std::vector<int32_t>{4, -100, 9}, {N});
  for (DivergenceKind kind : kAll) {
    for (double temperature : {0.6, 1.0, 1.7}) {
      for (int64_t top_k : {int64_t{0}, int64_t{6}}) {
        if (kind == DivergenceKind::ReverseKL && top_k > 0) continue;
        const std::string name = divergence_name(kind) + " T=" + std::to_string(temperature) +
                                 " top_k=" + std::to_string(top_k);
        kernels::DistillArgs a = args_for(kind, temperature);
        if (top_k > 0) {
          a.teacher_threshold = Tensor::empty({N});
          kernels::distill_filter_threshold(teacher, a.temperature, top_k, 1.0, a.teacher_threshold);
        }
        const double eps = 1e-2;
        // TVD away from its kinks: redraw until no |p − q| is within reach of the perturbation
        // (q moves by about q ε / T), so central differences see a smooth function.
        Tensor student;
        for (uint32_t attempt = 0; attempt < 100 && !student.defined(); ++attempt) {
          student = random_tensor({N, V}, 32 + attempt, -2.0f, 2.0f);
          const bool redraw = kind == DivergenceKind::TVD && near_a_kink(student, teacher, a, 4 * eps / temperature);
          if (redraw) student = Tensor();
        }
        ASSERT_TRUE(student.defined()) << name << ": no draw away from the kinks";
        Tensor grad = student.clone();
        row_losses(grad, teacher, targets, a, true);
        const Tensor fd = finite_difference_grad(
            student,
            [&] {
              Tensor s = student.clone();
              const Tensor l = row_losses(s, teacher, targets, a, false);
              double sum = 0;
              for (int64_t i = 0; i < N; ++i) sum += l.data<float>()[i];
              return sum;
            },
            eps);
        // Central differences: O(ε² / T³) truncation, plus the f32 loss's rounding (a few ulps of
        // each of the N rows' O(1) sums) over 2ε.
        const double tol = 0.3 * eps * eps / (temperature * temperature * temperature) +
                           2.0 * N * std::numeric_limits<float>::epsilon() / eps;
        EXPECT_LE(max_abs_diff(grad, fd), tol) << name;
        for (int64_t j = 0; j < V; ++j) EXPECT_EQ(grad.data<float>()[V + j], 0.0f) << name << ": ignored row";
      }
    }
  }
}

TEST(DistillLoss, FilterThresholdKeepsWhatTheSamplerKeeps) {
  const int64_t N = 6, V = 40;
  Tensor logits = random_tensor({N, V}, 41, -3.0f, 3.0f);
  // Row 0: five tied logits. Top-k keeps all of a tie, as the sampler; at a top-p cut inside a tie
  // the sampler keeps the lower ids and the threshold all of them (kernels/distill_loss.h), so
  // row 0 is checked with top-k alone.
  for (int64_t j = 0; j < 5; ++j) logits.data<float>()[j] = 1.25f;
  struct Filter {
    double temperature;
    int64_t top_k;
    double top_p;
  };
  for (const Filter& f : {Filter{1.0, 3, 1.0}, Filter{0.5, 0, 0.7}, Filter{2.0, 10, 0.9}, Filter{1.0, 0, 1.0},
                          Filter{1.3, 50, 0.95}, Filter{0.8, 1, 1.0}, Filter{1.0, 0, 1e-6}}) {
    Tensor threshold = Tensor::empty({N});
    kernels::distill_filter_threshold(logits, static_cast<float>(f.temperature), f.top_k, f.top_p, threshold);
    SamplingConfig cfg;
    cfg.temperature = f.temperature;
    cfg.top_k = f.top_k;
    cfg.top_p = f.top_p;
    for (int64_t i = f.top_p < 1 ? 1 : 0; i < N; ++i) {
      const float* z = logits.data<float>() + i * V;
      const std::vector<double> p = sampling_distribution(z, V, cfg);
      for (int64_t j = 0; j < V; ++j)
        EXPECT_EQ(z[j] >= threshold.data<float>()[i], p[j] > 0)
            << "T=" << f.temperature << " top_k=" << f.top_k << " top_p=" << f.top_p << " row " << i << " id " << j;
    }
  }
}

TEST(DistillLoss, ForwardOnlyChangesNothingAndFiltersMoveAcceptance) {
  const int64_t N = 4, V = 30;
  const Tensor teacher = random_tensor({N, V}, 51, -3.0f, 3.0f), student0 = random_tensor({N, V}, 52, -3.0f, 3.0f);
  const Tensor targets = random_ids({N}, static_cast<int32_t>(V), 53);
  DistillationLoss plain(DistillSpec{DivergenceKind::JSD, 1.0, 0, 1.0}, nullptr, 0, V, nullptr);
  DistillationLoss filtered(DistillSpec{DivergenceKind::JSD, 1.0, 5, 0.9}, nullptr, 0, V, nullptr);
  Tensor student = student0.clone();
  Cache c;
  const auto a = plain.forward(student, teacher, targets, c, -100, false);
  const auto b = filtered.forward(student, teacher, targets, c, -100, false);
  EXPECT_EQ(max_abs_diff(student, student0), 0.0) << "for_backward = false must leave the logits alone";
  EXPECT_FALSE(c.has("dstudent"));
  EXPECT_GT(a.loss, 0.0f);
  EXPECT_NE(a.loss, b.loss);
  EXPECT_GT(a.acceptance_sum, 0.0);
  EXPECT_LE(a.acceptance_sum, N + 1e-5);
  EXPECT_NE(a.acceptance_sum, b.acceptance_sum);
  // Identical logits: every token is accepted (q_f = p with the filters too); unfiltered the
  // divergence is 0, filtered it is the mass q puts outside p's kept set.
  for (const DistillSpec& spec :
       {DistillSpec{DivergenceKind::TVD, 0.7, 0, 1.0}, DistillSpec{DivergenceKind::TVD, 0.7, 5, 0.9}}) {
    DistillationLoss tvd(spec, nullptr, 0, V, nullptr);
    Tensor same = teacher.clone();
    const auto s = tvd.forward(same, teacher, targets, c);
    EXPECT_NEAR(s.acceptance_sum, N, 1e-5) << spec.top_k;
    if (spec.top_k == 0) {
      EXPECT_NEAR(s.loss, 0.0f, 1e-6);
      // p == q exactly: TVD's subgradient sign(p − q) is 0 there, so is the gradient.
      for (int64_t j = 0; j < N * V; ++j) ASSERT_EQ(same.data<float>()[j], 0.0f) << j;
    } else {
      EXPECT_GT(s.loss, 0.01f);
    }
  }
}

TEST(DistillLoss, VectorisableLogIsAccurate) {
  // cpu::vlog backs JSD's log m. Against double log over the normal floats (log-spaced, and
  // densely around 1 where log x is small): Cephes logf is within 2 ulp of the result, checked at
  // 3e-7 relative, or absolute where |log x| < 1.
  double worst = 0;
  for (int i = 0; i <= 2000000; ++i) {
    const float x = i <= 1000000 ? std::exp(-87.0f + 175.0f * static_cast<float>(i) / 1000000.0f)
                                 : 0.5f + static_cast<float>(i - 1000000) / 1000000.0f;
    const double want = std::log(static_cast<double>(x));
    worst = std::max(worst, std::fabs(kernels::cpu::vlog(x) - want) / std::max(1.0, std::fabs(want)));
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(kernels::cpu::vlog(1.0f), 0.0f);
  EXPECT_EQ(kernels::cpu::vlog(0.0f), -INFINITY);
  EXPECT_EQ(kernels::cpu::vlog(INFINITY), INFINITY);
  EXPECT_TRUE(std::isnan(kernels::cpu::vlog(-1.0f)));
  EXPECT_TRUE(std::isnan(kernels::cpu::vlog(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isfinite(kernels::cpu::vlog(1e-40f))) << "a subnormal gives a finite value";
}

TEST(DistillLoss, BadSpecNamesTheField) {
  auto message = [](DistillSpec s) { return error_of([&] { s.validate(); }); };
  EXPECT_NE(message({DivergenceKind::TVD, 0.0, 0, 1.0}).find("distill.temperature"), std::string::npos);
  EXPECT_NE(message({DivergenceKind::TVD, std::nan(""), 0, 1.0}).find("distill.temperature"), std::string::npos);
  EXPECT_NE(message({DivergenceKind::TVD, 1.0, -1, 1.0}).find("distill.top_k"), std::string::npos);
  EXPECT_NE(message({DivergenceKind::TVD, 1.0, 0, 0.0}).find("distill.top_p"), std::string::npos);
  EXPECT_NE(message({DivergenceKind::TVD, 1.0, 0, 1.5}).find("distill.top_p"), std::string::npos);
  const std::string rkl = message({DivergenceKind::ReverseKL, 1.0, 20, 1.0});
  EXPECT_NE(rkl.find("distill.loss"), std::string::npos);
  EXPECT_NE(rkl.find("reverse_kl"), std::string::npos);
  EXPECT_NE(message({DivergenceKind::ReverseKL, 1.0, 0, 0.9}).find("distill.loss"), std::string::npos);
  EXPECT_EQ(message({DivergenceKind::ReverseKL, 2.0, 0, 1.0}), "(no error)");
  // The constructor validates too.
  EXPECT_NE(error_of([] { DistillationLoss(DistillSpec{DivergenceKind::JSD, -1.0, 0, 1.0}, nullptr, 0, 4, nullptr); })
                .find("distill.temperature"),
            std::string::npos);
  for (DivergenceKind k : kAll) EXPECT_EQ(parse_divergence(divergence_name(k)), k);
  const std::string unknown = error_of([] { parse_divergence("kl"); });
  EXPECT_NE(unknown.find("distill.loss"), std::string::npos);
  EXPECT_NE(unknown.find("forward_kl"), std::string::npos);
}

TEST(DistillLoss, MismatchedLogitsAreAClearError) {
  DistillationLoss loss(DistillSpec{}, nullptr, 0, 8, nullptr);
  Cache c;
  const Tensor targets = Tensor::from_vector(std::vector<int32_t>{1, 2}, {2});
  const std::string vocab = error_of([&] { loss.forward(Tensor::zeros({2, 8}), Tensor::zeros({2, 9}), targets, c); });
  EXPECT_NE(vocab.find("share the vocabulary"), std::string::npos) << vocab;
  const std::string rows = error_of([&] { loss.forward(Tensor::zeros({3, 8}), Tensor::zeros({3, 8}), targets, c); });
  EXPECT_NE(rows.find("one row per target"), std::string::npos) << rows;
  const std::string size = error_of([&] {
    DistillationLoss loss16(DistillSpec{}, nullptr, 0, 16, nullptr);
    loss16.forward(Tensor::zeros({2, 8}), Tensor::zeros({2, 8}), targets, c);
  });
  EXPECT_NE(size.find("vocabulary has 16"), std::string::npos) << size;
}
