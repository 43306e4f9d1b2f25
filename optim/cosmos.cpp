#include "optim/cosmos.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/linalg.h"
#include "kernels/newton_schulz.h"

namespace anvil {
namespace {

template <class T>
double frobenius(const std::vector<T>& x) {
  double s = 0;
  for (T v : x) s += static_cast<double>(v) * static_cast<double>(v);
  return std::sqrt(s);
}

// The Adam branch (1-D, embeddings, over-threshold matrices), on n elements.
// Standard: AdamW with eps after bias correction. reference_compat: the reference's
// M <- beta1*M + 0.1*G with c1 = 1 - 0.9^t. Decay first, as the reference.
void adam_branch_step(float* w, const float* g, float* m, float* v, int64_t n, int64_t t, const CosmosConfig& cfg,
                      double lr, double wd) {
  const double b1 = cfg.beta1, b2 = cfg.beta2;
  const double m_scale = cfg.reference_compat ? 0.1 : 1.0 - b1;
  const double c1 = cfg.reference_compat ? 1.0 - std::pow(0.9, static_cast<double>(t))
                                         : 1.0 - std::pow(b1, static_cast<double>(t));
  const double sqrt_c2 = std::sqrt(1.0 - std::pow(b2, static_cast<double>(t)));
  const float decay = static_cast<float>(1.0 - lr * wd), step = static_cast<float>(lr / c1);
  const float fb1 = static_cast<float>(b1), fb2 = static_cast<float>(b2), fms = static_cast<float>(m_scale);
  const float fsc2 = static_cast<float>(sqrt_c2), feps = static_cast<float>(cfg.eps);
  const float one_minus_b2 = static_cast<float>(1.0 - b2);  // in double: 1.0f - 0.999f is off by 1e-5
  for (int64_t i = 0; i < n; ++i) {
    m[i] = fb1 * m[i] + fms * g[i];
    v[i] = fb2 * v[i] + one_minus_b2 * g[i] * g[i];
    w[i] = w[i] * decay - step * m[i] / (std::sqrt(v[i]) / fsc2 + feps);
  }
}

}  // namespace

template <class T>
void cosmos_matrix_step(const CosmosMatrix<T>& x, int64_t t, const CosmosConfig& cfg, double lr) {
  using kernels::host_gemm;
  const int64_t m = x.rows, n = x.cols, r = x.rank, mn = m * n;
  const T b1 = static_cast<T>(cfg.beta1), b2 = static_cast<T>(cfg.beta2), eps = static_cast<T>(cfg.eps);
  const T one_minus_b2 = static_cast<T>(1.0 - cfg.beta2);  // in double: 1.0f - 0.999f is off by 1e-5
  const T c1 = static_cast<T>((1.0 - std::pow(cfg.beta1, static_cast<double>(t))) / (1.0 - cfg.beta1));
  const T sqrt_c2 = static_cast<T>(std::sqrt(1.0 - std::pow(cfg.beta2, static_cast<double>(t))));

  // 1. Momentum without damping.
  for (int64_t i = 0; i < mn; ++i) x.m[i] = b1 * x.m[i] + x.g[i];

  // 2. Basis tracking. gp = G P with the new P.
  std::vector<T> gp(m * r);
  if (t == 1) {
    // Top-r eigenvectors of G^T G (descending; a null space, possible when m < n,
    // gets the canonical basis so the choice does not depend on the eigensolver).
    std::vector<T> gram(n * n), evals(n), evecs(n * n);
    host_gemm<T>(true, false, n, n, m, T(1), x.g, n, x.g, n, T(0), gram.data(), n);
    kernels::eigh_descending<T>(n, gram.data(), evals.data(), evecs.data());
    kernels::canonicalize_null_space<T>(n, evals.data(), evecs.data(), kernels::null_space_tolerance<T>(n));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < r; ++j) x.p[i * r + j] = evecs[i * n + j];
    host_gemm<T>(false, false, m, r, n, T(1), x.g, n, x.p, r, T(0), gp.data(), r);
    host_gemm<T>(true, false, r, r, m, one_minus_b2, gp.data(), r, gp.data(), r, T(0), x.s, r);
  } else {
    // P~ = b2 * P_old S + (1-b2) * G^T (G P_old); P = Q of its thin QR.
    std::vector<T> p_new(n * r), trans(r * r), st(r * r);
    host_gemm<T>(false, false, m, r, n, T(1), x.g, n, x.p, r, T(0), gp.data(), r);
    host_gemm<T>(false, false, n, r, r, b2, x.p, r, x.s, r, T(0), p_new.data(), r);
    host_gemm<T>(true, false, n, r, m, one_minus_b2, x.g, n, gp.data(), r, T(1), p_new.data(), r);
    kernels::qr_orthonormal<T>(n, r, p_new.data());
    // T = P_old^T P; S <- b2 * T^T S T + (1-b2) * (G P)^T (G P).
    host_gemm<T>(true, false, r, r, n, T(1), x.p, r, p_new.data(), r, T(0), trans.data(), r);
    host_gemm<T>(false, false, r, r, r, T(1), x.s, r, trans.data(), r, T(0), st.data(), r);
    host_gemm<T>(false, false, m, r, n, T(1), x.g, n, p_new.data(), r, T(0), gp.data(), r);
    host_gemm<T>(true, false, r, r, r, b2, trans.data(), r, st.data(), r, T(0), x.s, r);
    host_gemm<T>(true, false, r, r, m, one_minus_b2, gp.data(), r, gp.data(), r, T(1), x.s, r);
    std::copy(p_new.begin(), p_new.end(), x.p);
  }

  // 3. Second moment of the raw gradient in the new coordinates; V stays attached to
  // the column index (not rotated with P), as the reference.
  for (int64_t i = 0; i < m * r; ++i) x.v[i] = b2 * x.v[i] + (one_minus_b2) * gp[i] * gp[i];

  // 4. Direction.
  std::vector<T> dir(mn);
  for (int64_t i = 0; i < mn; ++i)
    dir[i] = cfg.nesterov ? (x.g[i] + b1 * x.m[i]) / (T(1) + b1 * c1) : x.m[i] / c1;

  // 5. Subspace part A = [(dir P) / (sqrt(V)/sqrt(c2) + eps)] P^T; 6. residual R = dir - (dir P) P^T.
  std::vector<T> h(m * r), hn(m * r), update(mn), resid(dir);
  host_gemm<T>(false, false, m, r, n, T(1), dir.data(), n, x.p, r, T(0), h.data(), r);
  for (int64_t i = 0; i < m * r; ++i) hn[i] = h[i] / (std::sqrt(x.v[i]) / sqrt_c2 + eps);
  host_gemm<T>(false, true, m, n, r, T(1), hn.data(), r, x.p, r, T(0), update.data(), n);
  const T scale = static_cast<T>(std::sqrt(static_cast<double>(mn)));
  if (r < n) {  // with r == n the residual is exactly zero: B = 0, not normalized rounding noise
    host_gemm<T>(false, true, m, n, r, T(-1), h.data(), r, x.p, r, T(1), resid.data(), n);
    kernels::newton_schulz<T>(resid.data(), resid.data(), m, n, cfg.newton_schulz);
    // 7. U = A + gamma * sqrt(mn) * O / (||O|| + eps).
    const T coef = static_cast<T>(cfg.gamma) * scale / (static_cast<T>(frobenius(resid)) + eps);
    for (int64_t i = 0; i < mn; ++i) update[i] += coef * resid[i];
  }

  // 8. Decay first, then a step of Frobenius norm lr*rho*sqrt(mn).
  const T decay = static_cast<T>(1.0 - lr * cfg.weight_decay);
  const T step = static_cast<T>(lr * cfg.lr_ratio) * scale / (static_cast<T>(frobenius(update)) + eps);
  for (int64_t i = 0; i < mn; ++i) x.w[i] = x.w[i] * decay - step * update[i];
}

template void cosmos_matrix_step<float>(const CosmosMatrix<float>&, int64_t, const CosmosConfig&, double);
template void cosmos_matrix_step<double>(const CosmosMatrix<double>&, int64_t, const CosmosConfig&, double);

Cosmos::Cosmos(std::vector<Param*> params, const CosmosConfig& config) : config_(config) {
  ANVIL_CHECK(config.rank >= 1, "cosmos: rank=", config.rank, " — set optimizer rank to at least 1");
  ANVIL_CHECK(config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1,
              "cosmos: betas (", config.beta1, ", ", config.beta2, ") must lie in [0, 1)");
  for (Param* p : params) {
    if (!p->trainable) continue;
    ANVIL_CHECK(p->value.dtype() == DType::F32 && p->value.device().is_cpu() && p->value.is_contiguous(),
                "cosmos: param ", p->name, " is ", p->value.describe(), "; this optimizer needs contiguous f32 CPU params");
    Slot s{p, uses_matrix_branch(*p), {}, {}, {}, {}};
    s.exp_avg = Tensor::zeros(p->value.shape());
    if (s.matrix) {
      const int64_t r = effective_rank(*p);
      s.exp_avg_sq = Tensor::zeros({p->value.size(0), r});
      s.basis = Tensor::zeros({p->value.size(1), r});
      s.basis_gram = Tensor::zeros({r, r});
    } else {
      s.exp_avg_sq = Tensor::zeros(p->value.shape());
    }
    slots_.push_back(std::move(s));
  }
}

bool Cosmos::uses_matrix_branch(const Param& p) const {
  if (p.value.dim() != 2 || p.value.size(0) > config_.max_rows) return false;
  return !config_.route_by_role || p.role == ParamRole::Matrix;
}

int64_t Cosmos::effective_rank(const Param& p) const {
  return std::min<int64_t>(config_.rank, p.value.size(1));
}

double Cosmos::decay_for(const Param& p) const {
  switch (p.role) {
    case ParamRole::Matrix:
    case ParamRole::Output: return config_.weight_decay;  // a weight matrix, decayed as one
    case ParamRole::Embedding: return config_.decay_embeddings ? config_.weight_decay : 0.0;
    case ParamRole::Vector: return config_.decay_vectors ? config_.weight_decay : 0.0;
  }
  return 0.0;
}

void Cosmos::step(double lr) {
  ++steps_;
  for (Slot& s : slots_) {
    Param& p = *s.param;
    ANVIL_CHECK(p.grad.defined(), "cosmos: param ", p.name, " has no gradient at step ", steps_);
    Tensor g = p.grad.contiguous();
    const double plr = lr * p.lr_scale;
    if (s.matrix) {
      CosmosConfig cfg = config_;
      cfg.weight_decay = decay_for(p);
      CosmosMatrix<float> x{p.value.data<float>(), g.data<float>(), s.exp_avg.data<float>(),
                            s.exp_avg_sq.data<float>(), s.basis.data<float>(), s.basis_gram.data<float>(),
                            p.value.size(0), p.value.size(1), s.basis.size(1)};
      cosmos_matrix_step<float>(x, steps_, cfg, plr);
    } else {
      adam_branch_step(p.value.data<float>(), g.data<float>(), s.exp_avg.data<float>(), s.exp_avg_sq.data<float>(),
                       p.value.numel(), steps_, config_, plr, decay_for(p));
    }
  }
}

std::vector<NamedTensor> Cosmos::state() {
  std::vector<NamedTensor> out;
  for (Slot& s : slots_) {
    out.push_back({s.param->name + ".exp_avg", s.exp_avg});
    out.push_back({s.param->name + ".exp_avg_sq", s.exp_avg_sq});
    if (s.matrix) {
      out.push_back({s.param->name + ".exp_avg_P", s.basis});
      out.push_back({s.param->name + ".exp_avg_GG", s.basis_gram});
    }
  }
  return out;
}

}  // namespace anvil
