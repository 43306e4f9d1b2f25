// TEMPORARY stub of models/distill_loss.h for the distill task's branch until the losses branch
// lands (delete then). Naive host loops over whole rows (gathered over tp); f32 on the CPU.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "models/distill_loss.h"
#include "parallel/data_parallel.h"

namespace anvil {

DivergenceKind parse_divergence(const std::string& name) {
  if (name == "forward_kl") return DivergenceKind::ForwardKL;
  if (name == "reverse_kl") return DivergenceKind::ReverseKL;
  if (name == "tvd") return DivergenceKind::TVD;
  if (name == "jsd") return DivergenceKind::JSD;
  ANVIL_FAIL("distill.loss: '", name, "' is not a divergence — choose forward_kl, reverse_kl, tvd or jsd");
}

std::string divergence_name(DivergenceKind kind) {
  switch (kind) {
    case DivergenceKind::ForwardKL: return "forward_kl";
    case DivergenceKind::ReverseKL: return "reverse_kl";
    case DivergenceKind::TVD: return "tvd";
    case DivergenceKind::JSD: return "jsd";
  }
  return "?";
}

void DistillSpec::validate() const {
  ANVIL_CHECK(temperature > 0, "distill.temperature must be positive, got ", temperature);
  ANVIL_CHECK(top_k >= 0, "distill.top_k must be >= 0, got ", top_k);
  ANVIL_CHECK(top_p > 0 && top_p <= 1, "distill.top_p must be in (0, 1], got ", top_p);
}

DistillationLoss::DistillationLoss(const DistillSpec& spec, Communicator* tp, int64_t vocab_start, int64_t vocab_size,
                                   Communicator* sp)
    : spec_(spec), tp_(tp), vocab_start_(vocab_start), vocab_size_(vocab_size), sp_(sp) {
  spec_.validate();
}

namespace {
std::vector<double> tempered_softmax(const float* z, int64_t V, double T) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < V; ++i) mx = std::max(mx, static_cast<double>(z[i]) / T);
  std::vector<double> p(V);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += p[i] = std::exp(static_cast<double>(z[i]) / T - mx);
  for (double& x : p) x /= s;
  return p;
}
std::vector<double> filtered(std::vector<double> p, int64_t top_k, double top_p) {
  const int64_t V = static_cast<int64_t>(p.size());
  auto renormalise = [&] {
    double s = 0;
    for (double x : p) s += x;
    for (double& x : p) x /= s;
  };
  if (top_k > 0 && top_k < V) {
    std::vector<double> sorted = p;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    for (double& x : p) x = x >= sorted[top_k - 1] ? x : 0;
    renormalise();
  }
  if (top_p < 1) {
    std::vector<int64_t> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
    double before = 0;
    for (int64_t v : order) {
      const double x = p[v];
      if (before >= top_p) p[v] = 0;
      before += x;
    }
    renormalise();
  }
  return p;
}
// Whole rows [N, V] on the host from this rank's shard [N, V/tp].
std::vector<float> whole_rows(const Tensor& shard, int64_t N, Communicator* tp) {
  const Tensor local = shard.to(Device::cpu()).to(DType::F32).contiguous().view({N, shard.size(-1)});
  const int64_t Vl = local.size(1);
  if (!tp) return std::vector<float>(local.data<float>(), local.data<float>() + N * Vl);
  Tensor all = Tensor::empty({tp->size() * N * Vl});
  tp->all_gather(local.view({N * Vl}), all);
  std::vector<float> rows(N * Vl * tp->size());
  const float* a = all.data<float>();
  for (int r = 0; r < tp->size(); ++r)
    for (int64_t n = 0; n < N; ++n)
      std::copy(a + (r * N + n) * Vl, a + (r * N + n + 1) * Vl, rows.begin() + n * Vl * tp->size() + r * Vl);
  return rows;
}
}  // namespace

DistillationLoss::Result DistillationLoss::forward(Tensor student, const Tensor& teacher, const Tensor& targets,
                                                   Cache& c, int ignore_index, bool for_backward) const {
  const int64_t N = targets.numel(), Vl = student.size(-1);
  const int64_t V = tp_ ? Vl * tp_->size() : Vl;
  const std::vector<float> zs = whole_rows(student, N, tp_), zt = whole_rows(teacher, N, tp_);
  const Tensor tg = targets.to(Device::cpu()).contiguous();
  const double T = spec_.temperature;
  std::vector<float> grad(N * Vl, 0.0f);
  double loss_sum = 0, tokens = 0, alpha = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (tg.data<int32_t>()[n] == ignore_index) continue;
    tokens += 1;
    const std::vector<double> p = filtered(tempered_softmax(&zt[n * V], V, T), spec_.top_k, spec_.top_p);
    const std::vector<double> q = tempered_softmax(&zs[n * V], V, T);
    const std::vector<double> qf = filtered(q, spec_.top_k, spec_.top_p);
    std::vector<double> g(V, 0.0);  // dD/dq
    double d = 0;
    for (int64_t v = 0; v < V; ++v) {
      alpha += std::min(p[v], qf[v]);
      switch (spec_.kind) {
        case DivergenceKind::ForwardKL:
          if (p[v] > 0) d += p[v] * (std::log(p[v]) - std::log(q[v]));
          g[v] = -p[v] / q[v];
          break;
        case DivergenceKind::ReverseKL:
          d += q[v] * (std::log(q[v]) - std::log(p[v]));
          g[v] = std::log(q[v]) - std::log(p[v]) + 1;
          break;
        case DivergenceKind::TVD:
          d += 0.5 * std::fabs(p[v] - q[v]);
          g[v] = q[v] > p[v] ? 0.5 : q[v] < p[v] ? -0.5 : 0.0;
          break;
        case DivergenceKind::JSD: {
          const double m = 0.5 * (p[v] + q[v]);
          if (p[v] > 0) d += 0.5 * p[v] * std::log(p[v] / m);
          d += 0.5 * q[v] * std::log(q[v] / m);
          g[v] = 0.5 * std::log(q[v] / m);
          break;
        }
      }
    }
    loss_sum += d;
    double qg = 0;
    for (int64_t v = 0; v < V; ++v) qg += q[v] * g[v];
    const int64_t start = tp_ ? vocab_start_ : 0;
    for (int64_t v = 0; v < Vl; ++v) grad[n * Vl + v] = static_cast<float>(q[start + v] * (g[start + v] - qg) / T);
  }
  if (sp_) {
    const std::vector<double> group = all_reduce_sum(*sp_, {loss_sum, tokens, alpha});
    loss_sum = group[0], tokens = group[1], alpha = group[2];
  }
  Result r;
  r.loss = tokens > 0 ? static_cast<float>(loss_sum / tokens) : 0.0f;
  r.tokens = tokens;
  r.acceptance_sum = alpha;
  if (for_backward) {
    ANVIL_CHECK(student.device().is_cpu() && student.dtype() == DType::F32, "distill loss stub: CPU f32 only");
    float* s = student.contiguous().data<float>();
    std::copy(grad.begin(), grad.end(), s);
    c["grad"] = student;
    c["count"] = Tensor::full({1}, tokens, DType::I64);
  }
  return r;
}

Tensor DistillationLoss::backward(Cache& c, float loss_scale, int64_t loss_tokens) const {
  Tensor g = c.get("grad");
  const double count = loss_tokens >= 0 ? static_cast<double>(loss_tokens) : c.get("count").item();
  const float scale = count > 0 ? static_cast<float>(loss_scale / count) : 0.0f;
  float* p = g.data<float>();
  for (int64_t i = 0; i < g.numel(); ++i) p[i] *= scale;
  return g;
}

}  // namespace anvil
