#include "models/layer_router.h"

#include <algorithm>
#include <cmath>

#include "kernels/matmul.h"

namespace anvil {

bool RouterSpec::routes(int64_t layer) const { return std::binary_search(layers.begin(), layers.end(), layer); }

const char* router_kind_name(RouterKind kind) { return kind == RouterKind::MindSkip ? "mindskip" : "drllm"; }

const char* skip_scope_name(SkipScope scope) {
  switch (scope) {
    case SkipScope::Attention: return "attention";
    case SkipScope::FeedForward: return "mlp";
    case SkipScope::Block: return "block";
  }
  return "?";
}

const char* skip_unit_name(SkipUnit unit) { return unit == SkipUnit::Sequence ? "sequence" : "token"; }

std::vector<int64_t> default_router_layers(int64_t num_layers, int64_t n) {
  ANVIL_CHECK(n >= 1, "router.n = ", n, ": the default router layer count must be >= 1");
  ANVIL_CHECK(num_layers >= 2, "layer-skip routers need a model of >= 2 layers (the final layer never gets one), "
              "this one has ", num_layers);
  std::vector<int64_t> layers;
  for (int64_t i = std::max<int64_t>(0, num_layers - 1 - n); i <= num_layers - 2; ++i) layers.push_back(i);
  return layers;
}

void check_router_spec(const RouterSpec& spec, int64_t num_layers) {
  ANVIL_CHECK(!spec.layers.empty(), "router.layers is empty — name the layers that get a router, or leave it [] in "
              "the config for the default (the last router.n layers but the final one)");
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const int64_t l = spec.layers[i];
    ANVIL_CHECK(l >= 0 && l < num_layers - 1, "router.layers: layer ", l, " is outside [0, ", num_layers - 1,
                ") — the model has ", num_layers, " layers and the final one (", num_layers - 1,
                ") never gets a router");
    ANVIL_CHECK(i == 0 || l > spec.layers[i - 1], "router.layers must be sorted and unique, got ", spec.layers[i - 1],
                " then ", l);
  }
  if (spec.kind == RouterKind::MindSkip) {
    ANVIL_CHECK(spec.tau > 0.0f && spec.tau < 1.0f, "router.tau = ", spec.tau,
                " is outside (0, 1) — the threshold on sigmoid(w . xbar); 0.5 runs every sub-block at the start");
  } else {
    ANVIL_CHECK(spec.hidden >= 1, "router.hidden = ", spec.hidden, ": the Dr.LLM bottleneck width must be >= 1");
    ANVIL_CHECK(spec.windows >= 1, "router.windows = ", spec.windows, ": the Dr.LLM window count must be >= 1");
  }
}

MindSkipRouter::MindSkipRouter(const std::string& layer_prefix, int64_t hidden, SkipUnit unit, float tau,
                               bool whole_block, bool train_skipped)
    : weight(layer_prefix + ".router.weight", Tensor::zeros({1, hidden}), ParamRole::Vector, Init::Zeros),
      unit_(unit),
      tau_(tau),
      whole_block_(whole_block),
      train_skipped_(train_skipped) {}

namespace {
// n as f32 rows [B * T, hidden] on its device.
Tensor rows_f32(const Tensor& n) {
  const Tensor c = n.contiguous();
  const Tensor f = c.dtype() == DType::F32 ? c : c.to(DType::F32);
  return f.view({n.size(0) * n.size(1), n.size(2)});
}

// The router's f32 weight [1, hidden] on `device` (the master when the value is bf16).
Tensor weight_f32(const Param& w, Device device) {
  Tensor m = master_weight(w);
  if (m.dtype() != DType::F32) m = m.to(DType::F32);
  return m.device() == device ? m : m.to(device);
}

float sigmoid(double z) { return static_cast<float>(1.0 / (1.0 + std::exp(-z))); }
}  // namespace

std::vector<float> MindSkipRouter::logits(const Tensor& n) const {
  ANVIL_CHECK(n.dim() == 3 && n.size(2) == weight.value.size(1), weight.name, ": the router's input must be [B, T, ",
              weight.value.size(1), "], got ", n.describe());
  const int64_t B = n.size(0), T = n.size(1);
  // w . xbar = the mean of the per-token dots (w is linear), so one [N, hidden] x [hidden] product.
  const Tensor dots = kernels::matmul(rows_f32(n), false, weight_f32(weight, n.device()), true).to(Device::cpu());
  const float* d = dots.data<float>();
  if (unit_ == SkipUnit::Token) return std::vector<float>(d, d + B * T);
  std::vector<float> z(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    double s = 0;
    for (int64_t t = 0; t < T; ++t) s += d[b * T + t];
    z[static_cast<size_t>(b)] = static_cast<float>(s / static_cast<double>(T));
  }
  return z;
}

Tensor MindSkipRouter::gates(const std::vector<float>& r, int64_t B, int64_t T) const {
  ANVIL_CHECK(forced.empty() || forced.size() == r.size(), weight.name, ": ", forced.size(),
              " forced decisions for a call of ", r.size(), " ", skip_unit_name(unit_), " units");
  Tensor g = Tensor::empty({B, T}, DType::F32);
  float* pg = g.data<float>();
  const int64_t per_unit = unit_ == SkipUnit::Sequence ? T : 1;  // a sequence's decision on each of its tokens
  for (int64_t i = 0; i < B * T; ++i) {
    const size_t u = static_cast<size_t>(i / per_unit);
    pg[i] = (forced.empty() ? r[u] >= tau_ : forced[u] != 0.0f) ? 1.0f : 0.0f;
  }
  return g;
}

Tensor MindSkipRouter::probabilities(const Tensor& n) const {
  std::vector<float> r = logits(n);
  for (float& v : r) v = sigmoid(v);
  return Tensor::from_vector(r, {static_cast<int64_t>(r.size())});
}

Tensor MindSkipRouter::infer(const Tensor& n) {
  std::vector<float> r = logits(n);
  for (float& v : r) v = sigmoid(v);
  return gates(r, n.size(0), n.size(1));
}

Tensor MindSkipRouter::forward(const Tensor& n, Cache& c) {
  std::vector<float> r = logits(n);
  for (float& v : r) v = sigmoid(v);
  const Tensor g = gates(r, n.size(0), n.size(1));
  if (StepContext* ctx = c.mutable_context()) {
    const int64_t per_unit = unit_ == SkipUnit::Sequence ? n.size(1) : 1;
    double gate_sum = 0;
    for (int64_t i = 0; i < g.numel(); i += per_unit) gate_sum += g.data<float>()[i];
    ctx->router_stats.gate_sum += gate_sum;
    ctx->router_stats.units += static_cast<double>(r.size());
    std::pair<double, double>& mine = ctx->router_stats.per_router[weight.name];  // per-layer skip ratios
    mine.first += gate_sum;
    mine.second += static_cast<double>(r.size());
  }
  Tensor saved_r = Tensor::empty({static_cast<int64_t>(r.size())}, DType::F32);
  std::copy(r.begin(), r.end(), saved_r.data<float>());
  c["n"] = n;
  c["r"] = saved_r;
  return g;
}

Tensor MindSkipRouter::backward(const Tensor& dg, Cache& c) {
  const Tensor n = c.get("n"), saved_r = c.get("r");
  const int64_t B = n.size(0), T = n.size(1), N = B * T;
  const Tensor dgc = dg.to(Device::cpu()).contiguous();
  ANVIL_CHECK(dgc.dtype() == DType::F32 && dgc.numel() == N, weight.name, ": dL/dg must be f32 [", B, ", ", T,
              "], got ", dg.describe());
  const float capacity_grad = c.context().router_capacity_grad;
  const float *pdg = dgc.data<float>(), *pr = saved_r.data<float>();
  const int64_t units = saved_r.numel(), per_unit = N / units;
  // a_t = dL/dz of the token's unit / tokens per unit: dL/dn_t = a_t w, dL/dw = sum_t a_t n_t.
  Tensor a = Tensor::empty({N, 1}, DType::F32);
  float* pa = a.data<float>();
  for (int64_t u = 0; u < units; ++u) {
    double dgu = capacity_grad;
    for (int64_t t = 0; t < per_unit; ++t) dgu += pdg[u * per_unit + t];
    const double dz = dgu * pr[u] * (1.0 - pr[u]);  // straight-through: dg/dr = 1, then sigma'
    for (int64_t t = 0; t < per_unit; ++t) pa[u * per_unit + t] = static_cast<float>(dz / per_unit);
  }
  const Tensor ad = a.to(n.device()), x = rows_f32(n);
  if (weight.grad.defined()) kernels::matmul(ad, true, x, false, weight.grad, 1.0f, 1.0f);
  Tensor dn = kernels::matmul(ad, false, weight_f32(weight, n.device()), false);
  c.clear();
  if (dn.dtype() != n.dtype()) dn = dn.to(n.dtype());
  return dn.view(n.shape());
}

size_t MindSkipRouter::activation_bytes(const ActivationDims& d) const {
  return d.tokens * static_cast<size_t>(weight.value.size(1)) * d.act + d.tokens * d.stat;
}

BlockGateFactory mindskip_gates(const RouterSpec& spec) {
  return [spec](const BlockContext& b, SubBlock sub) -> std::unique_ptr<BlockGate> {
    if (!spec.routes(b.layer)) return nullptr;
    const SubBlock gated = spec.scope == SkipScope::FeedForward ? SubBlock::FeedForward : SubBlock::Attention;
    if (sub != gated) return nullptr;
    return std::make_unique<MindSkipRouter>(b.prefix, b.config.hidden_size, spec.unit, spec.tau,
                                            spec.scope == SkipScope::Block, spec.train_skipped);
  };
}

}  // namespace anvil
