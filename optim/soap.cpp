#include "optim/soap.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/linalg.h"

namespace anvil {
namespace {

using kernels::host_gemm;

// Eigenbasis of a factor: descending eigenvalues, canonical basis on its null space
// (at the first call L = (1-beta)GG^T has rank <= min(m, n), so one side always has
// a null space whose basis the eigensolver would otherwise choose arbitrarily).
void eigenbasis(int64_t n, const float* factor, float* q) {
  std::vector<float> evals(n);
  kernels::eigh_descending<float>(n, factor, evals.data(), q);
  kernels::canonicalize_null_space<float>(n, evals.data(), q, kernels::null_space_tolerance<float>(n));
}

}  // namespace

Soap::Soap(std::vector<Param*> params, const SoapConfig& config) : config_(config) {
  ANVIL_CHECK(config.precondition_frequency >= 1, "soap: precondition_frequency=", config.precondition_frequency,
              " — set it to at least 1");
  for (Param* p : params) {
    if (!p->trainable) continue;
    ANVIL_CHECK(p->value.dtype() == DType::F32 && p->value.device().is_cpu() && p->value.is_contiguous(),
                "soap: param ", p->name, " is ", p->value.describe(), "; this optimizer needs contiguous f32 CPU params");
    ANVIL_CHECK(p->value.dim() == 1 || p->value.dim() == 2, "soap: param ", p->name, " is ", p->value.describe(),
                "; only 1-D and 2-D params are supported (view higher-rank weights as matrices first)");
    Slot s{p, p->value.dim() == 2 ? p->value.size(0) : 1, p->value.size(-1), {}, {}, {}, {}, {}, {}};
    s.exp_avg = Tensor::zeros(p->value.shape());
    s.exp_avg_sq = Tensor::zeros(p->value.shape());
    if (p->value.dim() == 2 && s.rows <= config.max_precond_dim) {
      s.gg_left = Tensor::zeros({s.rows, s.rows});
      s.q_left = Tensor::zeros({s.rows, s.rows});
    }
    if (p->value.dim() == 2 && s.cols <= config.max_precond_dim) {
      s.gg_right = Tensor::zeros({s.cols, s.cols});
      s.q_right = Tensor::zeros({s.cols, s.cols});
    }
    slots_.push_back(std::move(s));
  }
}

double Soap::decay_for(const Param& p) const {
  switch (p.role) {
    case ParamRole::Matrix:
    case ParamRole::Output: return config_.weight_decay;  // a weight matrix, decayed as one
    case ParamRole::Embedding: return config_.decay_embeddings ? config_.weight_decay : 0.0;
    case ParamRole::Vector: return config_.decay_vectors ? config_.weight_decay : 0.0;
  }
  return 0.0;
}

void Soap::accumulate_factors(Slot& s, const float* g) const {
  const double beta = config_.shampoo_beta < 0 ? config_.beta2 : config_.shampoo_beta;
  const float sb = static_cast<float>(beta), one_minus_sb = static_cast<float>(1.0 - beta);
  if (s.gg_left.defined())  // L <- sb*L + (1-sb) G G^T
    host_gemm<float>(false, true, s.rows, s.rows, s.cols, one_minus_sb, g, s.cols, g, s.cols, sb,
                     s.gg_left.data<float>(), s.rows);
  if (s.gg_right.defined())  // R <- sb*R + (1-sb) G^T G
    host_gemm<float>(true, false, s.cols, s.cols, s.rows, one_minus_sb, g, s.cols, g, s.cols, sb,
                     s.gg_right.data<float>(), s.cols);
}

void Soap::change_basis(const Slot& s, const float* x, float* out, bool rotate) const {
  const int64_t m = s.rows, n = s.cols;
  std::vector<float> tmp(x, x + m * n);
  if (s.q_left.defined())  // Q_L^T x, or Q_L x
    host_gemm<float>(rotate, false, m, n, m, 1.0f, s.q_left.data<float>(), m, x, n, 0.0f, tmp.data(), n);
  if (s.q_right.defined())  // (.) Q_R, or (.) Q_R^T
    host_gemm<float>(false, !rotate, m, n, n, 1.0f, tmp.data(), n, s.q_right.data<float>(), n, 0.0f, out, n);
  else
    std::copy(tmp.begin(), tmp.end(), out);
}

void Soap::refresh_basis(Slot& s, bool left) {
  Tensor& factor = left ? s.gg_left : s.gg_right;
  Tensor& q = left ? s.q_left : s.q_right;
  const int64_t d = factor.size(0);
  const float* l = factor.data<float>();
  float* qp = q.data<float>();
  // Estimated eigenvalues diag(Q^T L Q).
  std::vector<float> lq(d * d), est(d);
  host_gemm<float>(false, false, d, d, d, 1.0f, l, d, qp, d, 0.0f, lq.data(), d);
  for (int64_t j = 0; j < d; ++j) {
    double acc = 0;
    for (int64_t i = 0; i < d; ++i) acc += static_cast<double>(qp[i * d + j]) * lq[i * d + j];
    est[j] = static_cast<float>(acc);
  }
  std::vector<int64_t> order(d);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return est[a] > est[b]; });
  // Permute Q's columns and V's matching axis (rows for L, columns for R).
  std::vector<float> sorted(d * d);
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) sorted[i * d + j] = qp[i * d + order[j]];
  float* v = s.exp_avg_sq.data<float>();
  const int64_t m = s.rows, n = s.cols;
  std::vector<float> old_v(v, v + m * n);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) v[i * n + j] = left ? old_v[order[i] * n + j] : old_v[i * n + order[j]];
  // One power-iteration step: Q <- QR(L Q_sorted).Q.
  host_gemm<float>(false, false, d, d, d, 1.0f, l, d, sorted.data(), d, 0.0f, qp, d);
  kernels::qr_orthonormal<float>(d, d, qp);
}

void Soap::initialize(Slot& s, const float* g) {
  accumulate_factors(s, g);
  if (s.gg_left.defined()) eigenbasis(s.rows, s.gg_left.data<float>(), s.q_left.data<float>());
  if (s.gg_right.defined()) eigenbasis(s.cols, s.gg_right.data<float>(), s.q_right.data<float>());
}

void Soap::update(Slot& s, const float* g, int64_t t, double lr) {
  const int64_t size = s.rows * s.cols;
  const float b1 = static_cast<float>(config_.beta1), b2 = static_cast<float>(config_.beta2);
  const float eps = static_cast<float>(config_.eps);
  // 1 - beta in double: 1.0f - 0.999f is off by 1e-5 relative.
  const float one_minus_b1 = static_cast<float>(1.0 - config_.beta1), one_minus_b2 = static_cast<float>(1.0 - config_.beta2);
  float* w = s.param->value.data<float>();
  float* m = s.exp_avg.data<float>();
  float* v = s.exp_avg_sq.data<float>();

  // 1-3. Rotate the gradient; Adam moments in the rotated basis; N = M / (sqrt(V) + eps).
  std::vector<float> rotated(size), dir(size);
  change_basis(s, g, rotated.data(), true);
  for (int64_t i = 0; i < size; ++i) {
    m[i] = b1 * m[i] + one_minus_b1 * rotated[i];
    v[i] = b2 * v[i] + one_minus_b2 * rotated[i] * rotated[i];
    rotated[i] = m[i] / (std::sqrt(v[i]) + eps);
  }
  // 4. W -= lr * sqrt(1-b2^t)/(1-b1^t) * Q_L N Q_R^T; 5. decay after the step.
  double step_size = lr;
  if (config_.correct_bias)
    step_size *= std::sqrt(1.0 - std::pow(config_.beta2, static_cast<double>(t))) /
                 (1.0 - std::pow(config_.beta1, static_cast<double>(t)));
  change_basis(s, rotated.data(), dir.data(), false);
  const float fstep = static_cast<float>(step_size), decay = static_cast<float>(lr * decay_for(*s.param));
  for (int64_t i = 0; i < size; ++i) {
    w[i] -= fstep * dir[i];
    w[i] -= decay * w[i];
  }

  // 6-7. M back to the original basis, factors updated with G, bases refreshed every
  // f steps, then M re-projected into the (possibly new) basis.
  if (!s.gg_left.defined() && !s.gg_right.defined()) return;
  change_basis(s, m, dir.data(), false);
  accumulate_factors(s, g);
  if (t % config_.precondition_frequency == 0) {
    if (s.gg_left.defined()) refresh_basis(s, true);
    if (s.gg_right.defined()) refresh_basis(s, false);
  }
  change_basis(s, dir.data(), m, true);
}

void Soap::step(double lr) {
  ++calls_;
  for (Slot& s : slots_) {
    ANVIL_CHECK(s.param->grad.defined(), "soap: param ", s.param->name, " has no gradient at call ", calls_);
    Tensor g = s.param->grad.contiguous();
    if (calls_ == 1) initialize(s, g.data<float>());
    else update(s, g.data<float>(), calls_ - 1, lr * s.param->lr_scale);
  }
}

std::vector<NamedTensor> Soap::state() {
  std::vector<NamedTensor> out;
  for (Slot& s : slots_) {
    const std::string& n = s.param->name;
    out.push_back({n + ".exp_avg", s.exp_avg});
    out.push_back({n + ".exp_avg_sq", s.exp_avg_sq});
    if (s.gg_left.defined()) {
      out.push_back({n + ".GG_left", s.gg_left});
      out.push_back({n + ".Q_left", s.q_left});
    }
    if (s.gg_right.defined()) {
      out.push_back({n + ".GG_right", s.gg_right});
      out.push_back({n + ".Q_right", s.q_right});
    }
  }
  return out;
}

}  // namespace anvil
