// How far apart two AdamW runs (PyTorch semantics, optim/adamw.h) may end when their
// gradients differ only by fp32 summation order: the tolerance for tests that compare
// params after optimizer steps (two layouts, or a layout and one process).
//
// Why not a fixed 1e-5: Adam divides each element by sqrt(v) + eps, so an element whose
// gradient is near eps turns summation-order noise into a visible step, by an amount that
// depends on the BLAS kernels the CPU picks. The bound below is derived per tensor from the
// gradient differences measured at each step (which the tests bound separately):
//   m^ = sum_i w1_i g_i is a convex combination of the gradients, so |dm^| <= D;
//   sqrt(v^) = sqrt(sum_i w2_i g_i^2) is a weighted l2 norm with weights summing to 1, so
//   |d sqrt(v^)| <= D (triangle inequality), where D is the largest |g_a - g_b| so far;
//   u = m^ / (sqrt(v^) + eps) has |du| <= (|dm^| + |u| |d sqrt(v^)|) / eps and, by
//   Cauchy-Schwarz over the two weight sets, |u| <= |m^| / sqrt(v^) <= sqrt(sum w1^2 / w2).
// So step t moves the two params apart by at most lr * (1 + sqrt(sum w1^2 / w2)) * D / eps;
// decoupled decay multiplies earlier drift by (1 - lr wd) <= 1; and each step's fp32
// arithmetic adds a few ulps of the param (4 * 2^-24 |p|max, generous). A test using it
// picks eps so that this stays far below the step lr * |u| a layout bug would show.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/tensor.h"

namespace anvil::testing {

// max |x| of an f32 tensor.
inline double max_abs(const Tensor& x) {
  double m = 0;
  for (float v : x.to_vector()) m = std::fmax(m, std::fabs(double(v)));
  return m;
}

class AdamDrift {
 public:
  AdamDrift(double beta1, double beta2, double eps) : beta1_(beta1), beta2_(beta2), eps_(eps) {}

  // One optimizer step at `lr`, the tensor's gradients having differed by at most
  // `grad_diff` (max abs) at it; `param_max` is max |p| of the tensor.
  void step(double lr, double grad_diff, double param_max) {
    ++t_;
    largest_grad_diff_ = std::fmax(largest_grad_diff_, grad_diff);
    bound_ += lr * (1.0 + update_ratio_bound()) * largest_grad_diff_ / eps_ + 4.0 * std::ldexp(param_max, -24);
  }

  // Max |p_a - p_b| the steps so far allow.
  double bound() const { return bound_; }

 private:
  // sqrt(sum_i w1_i^2 / w2_i) at step t_ (bias-corrected weights): bounds |m^| / sqrt(v^).
  double update_ratio_bound() const {
    double sum = 0;
    for (int64_t i = 1; i <= t_; ++i) {
      const double w1 = (1 - beta1_) * std::pow(beta1_, double(t_ - i)) / (1 - std::pow(beta1_, double(t_)));
      const double w2 = (1 - beta2_) * std::pow(beta2_, double(t_ - i)) / (1 - std::pow(beta2_, double(t_)));
      sum += w1 * w1 / w2;
    }
    return std::sqrt(sum);
  }

  double beta1_, beta2_, eps_;
  int64_t t_ = 0;
  double largest_grad_diff_ = 0, bound_ = 0;
};

}  // namespace anvil::testing
