// kernels/distill_loss on CUDA against the CPU backend on the same inputs: the filter
// thresholds (top-k, top-p, both), the fused full-row forward (per-row loss, acceptance and
// the in-place gradient) and the three shard halves, for every divergence, with the student
// and the teacher in f32 or bf16 (each its own dtype) and ignored rows.
// Error measure and base tolerances: tests/support/gpu_check.h.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>

#include "kernels/distill_loss.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr DType F32 = DType::F32, BF16 = DType::BF16;
constexpr int64_t kN = 37, kV = 1000;
// The losses are sums of V terms computed with CUDA's expf/logf against the CPU's vexp/logf
// (each within 2 ulp) in another order, and KL-type sums cancel: 1e-4 of the largest value
// leaves room for that and still fails on any indexing or normaliser error.
constexpr double kLossTol = 1e-4;

const kernels::Divergence kKinds[] = {kernels::Divergence::ForwardKL, kernels::Divergence::ReverseKL,
                                      kernels::Divergence::TVD, kernels::Divergence::JSD};

struct Filter {
  int64_t top_k;
  double top_p;
};
const Filter kFilters[] = {{0, 1.0}, {20, 1.0}, {0, 0.8}, {50, 0.9}};

Tensor ignoring_targets() {
  Tensor t = random_ids({kN}, static_cast<int32_t>(kV), 93);
  for (int64_t i = 0; i < kN; i += 6) t.data<int32_t>()[i] = -100;
  return t;
}

std::string label(kernels::Divergence k, const Filter& f, DType ds, DType dt) {
  return "kind " + std::to_string(static_cast<int>(k)) + " top_k " + std::to_string(f.top_k) + " top_p " +
         std::to_string(f.top_p) + " student " + dtype_label(ds) + " teacher " + dtype_label(dt);
}

class DistillGpu : public ::testing::TestWithParam<std::tuple<DType, DType>> {};

TEST_P(DistillGpu, MatchesCpu) {
  const DType ds = std::get<0>(GetParam()), dt = std::get<1>(GetParam());
  const Tensor student = reference_input(random_tensor({kN, kV}, 91, -4.0f, 4.0f), ds);
  const Tensor teacher = reference_input(random_tensor({kN, kV}, 92, -4.0f, 4.0f), dt);
  const Tensor targets = ignoring_targets(), targets_g = on_gpu(targets);
  const Tensor student_g = gpu_operand(student, ds), teacher_g = gpu_operand(teacher, dt);
  const float temperature = 0.8f;
  for (const Filter& f : kFilters) {
    kernels::DistillArgs a, ag;
    a.temperature = ag.temperature = temperature;
    if (f.top_k > 0 || f.top_p < 1) {
      a.teacher_threshold = Tensor::empty({kN});
      a.student_threshold = Tensor::empty({kN});
      kernels::distill_filter_threshold(teacher, temperature, f.top_k, f.top_p, a.teacher_threshold);
      kernels::distill_filter_threshold(student, temperature, f.top_k, f.top_p, a.student_threshold);
      ag.teacher_threshold = Tensor::empty({kN}, F32, gpu());
      ag.student_threshold = Tensor::empty({kN}, F32, gpu());
      kernels::distill_filter_threshold(teacher_g, temperature, f.top_k, f.top_p, ag.teacher_threshold);
      kernels::distill_filter_threshold(student_g, temperature, f.top_k, f.top_p, ag.student_threshold);
      // The thresholds are logits of the row: the bisection finds the same one exactly.
      EXPECT_EQ(max_abs_diff(host_f32(ag.teacher_threshold), a.teacher_threshold), 0.0) << "teacher threshold";
      EXPECT_EQ(max_abs_diff(host_f32(ag.student_threshold), a.student_threshold), 0.0) << "student threshold";
      // Use the CPU's thresholds on both sides, so the rest compares the loss kernels alone.
      ag.teacher_threshold = on_gpu(a.teacher_threshold);
      ag.student_threshold = on_gpu(a.student_threshold);
    }
    for (kernels::Divergence k : kKinds) {
      if (k == kernels::Divergence::ReverseKL && (f.top_k > 0 || f.top_p < 1)) continue;
      const std::string what = label(k, f, ds, dt);
      a.kind = ag.kind = k;
      // Full rows.
      Tensor grad = student.clone(), losses = Tensor::empty({kN}), acc = Tensor::empty({kN});
      kernels::distill_forward(grad, teacher, targets, a, losses, acc, true);
      Tensor grad_g = student_g.clone(), losses_g = Tensor::empty({kN}, F32, gpu()),
             acc_g = Tensor::empty({kN}, F32, gpu());
      kernels::distill_forward(grad_g, teacher_g, targets_g, ag, losses_g, acc_g, true);
      const double grad_tol = kLossTol + (ds == BF16 ? kBf16Rounding : 0.0);
      EXPECT_GPU_NEAR(losses_g, losses, kLossTol, "losses " + what);
      EXPECT_GPU_NEAR(acc_g, acc, kLossTol, "acceptance " + what);
      EXPECT_GPU_NEAR(grad_g, grad, grad_tol, "gradient " + what);
      // The shard halves on columns [V/4, 3V/4) with the full rows' norms (as one tp rank would).
      const int64_t c0 = kV / 4, c1 = 3 * kV / 4;
      const Tensor sq = student.slice(1, c0, c1).contiguous(), sp = teacher.slice(1, c0, c1).contiguous();
      const Tensor sq_g = gpu_operand(sq, ds), sp_g = gpu_operand(sp, dt);
      Tensor stats = Tensor::empty({5, kN}), stats_g = Tensor::empty({5, kN}, F32, gpu());
      kernels::distill_shard_stats(sq, sp, a, stats);
      kernels::distill_shard_stats(sq_g, sp_g, ag, stats_g);
      EXPECT_GPU_NEAR(stats_g, stats, kLossTol, "shard stats " + what);
      Tensor norms = Tensor::empty({3, kN});
      for (int64_t i = 0; i < kN; ++i)  // the shard's own normalisers stand in for the global ones
        for (int s = 0; s < 3; ++s) {
          const float* st = stats.data<float>();
          const int64_t sum_row = s == 0 ? 1 : (s == 1 ? 3 : 4), max_row = s == 1 ? 2 : 0;
          norms.data<float>()[s * kN + i] = st[max_row * kN + i] + std::log(st[sum_row * kN + i]);
        }
      Tensor terms = Tensor::empty({3, kN}), terms_g = Tensor::empty({3, kN}, F32, gpu());
      kernels::distill_shard_terms(sq, sp, targets, a, norms, terms);
      kernels::distill_shard_terms(sq_g, sp_g, targets_g, ag, on_gpu(norms), terms_g);
      EXPECT_GPU_NEAR(terms_g, terms, kLossTol, "shard terms " + what);
      Tensor sgrad = sq.clone(), sgrad_g = sq_g.clone();
      const Tensor qg = terms.select(0, 2).contiguous();
      kernels::distill_shard_grad(sgrad, sp, targets, a, norms, qg);
      kernels::distill_shard_grad(sgrad_g, sp_g, targets_g, ag, on_gpu(norms), on_gpu(qg));
      EXPECT_GPU_NEAR(sgrad_g, sgrad, grad_tol, "shard gradient " + what);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, DistillGpu,
                         ::testing::Values(std::make_tuple(F32, F32), std::make_tuple(BF16, BF16),
                                           std::make_tuple(BF16, F32), std::make_tuple(F32, BF16)));

}  // namespace
