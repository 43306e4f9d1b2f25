#include "optim/muon.h"

#include <algorithm>
#include <cmath>

#include "kernels/elementwise.h"
#include "kernels/muon_kernels.h"

namespace anvil {

MuonScale parse_muon_scale(const std::string& s) {
  if (s == "keller") return MuonScale::Keller;
  if (s == "moonlight") return MuonScale::Moonlight;
  ANVIL_FAIL("muon scale '", s, "' is unknown — use \"keller\" (sqrt(max(1, rows/cols))) or \"moonlight\" ",
             "(0.2 * sqrt(max(rows, cols)))");
}

MuonMomentum parse_muon_momentum(const std::string& s) {
  if (s == "ema") return MuonMomentum::Ema;
  if (s == "sum") return MuonMomentum::Sum;
  ANVIL_FAIL("muon momentum form '", s, "' is unknown — use \"ema\" (B = beta B + (1-beta) G) or \"sum\" ",
             "(B = beta B + G)");
}

const char* muon_scale_name(MuonScale s) { return s == MuonScale::Keller ? "keller" : "moonlight"; }
const char* muon_momentum_name(MuonMomentum m) { return m == MuonMomentum::Ema ? "ema" : "sum"; }

void MuonConfig::validate() const {
  ANVIL_CHECK(momentum >= 0.0 && momentum < 1.0, "muon: momentum = ", momentum, " must be in [0, 1)");
  ANVIL_CHECK(weight_decay >= 0.0, "muon: weight_decay = ", weight_decay, " must be >= 0");
  ANVIL_CHECK(ns.steps >= 1 && ns.steps <= 20, "muon: ns_steps = ", ns.steps,
              " must be in [1, 20] (the reference uses 5)");
  ANVIL_CHECK(ns.eps > 0.0, "muon: ns eps = ", ns.eps, " must be > 0");
}

Muon::Muon(std::vector<Param*> params, const MuonConfig& config) : config_(config) {
  config_.validate();
  for (Param* p : params) {
    if (!p->trainable) continue;  // frozen params carry no optimizer state
    ANVIL_CHECK(p->value.dim() >= 2, "muon: param ", p->name, " is ", p->value.describe(),
                " but Muon only updates matrices — route params with fewer than 2 dims to AdamW");
    const Tensor& w = master_weight(*p);  // the f32 master under mixed precision
    ANVIL_CHECK(w.dtype() == DType::F32 && w.is_contiguous(), "muon: param ", p->name, " is ", w.describe(),
                " but Muon needs contiguous f32 weights (an f32 master for a bf16 value)");
    const int64_t rows = w.size(0);
    slots_.push_back({p, zeros_like(w, w.shape(), DType::F32), rows, rows ? w.numel() / rows : 0});
  }
}

double Muon::update_scale(int64_t rows, int64_t cols) const {
  if (config_.scale == MuonScale::Moonlight) return 0.2 * std::sqrt(static_cast<double>(std::max(rows, cols)));
  return std::sqrt(std::max(1.0, static_cast<double>(rows) / static_cast<double>(cols)));
}

void Muon::step(double lr) {
  ++steps_;
  const float beta = static_cast<float>(config_.momentum);
  const bool ema = config_.momentum_form == MuonMomentum::Ema;
  for (Slot& s : slots_) {
    Param& p = *s.param;
    ANVIL_CHECK(p.grad.defined(), "muon: param ", p.name, " has no gradient — was it frozen after the optimizer ",
                "was built? Rebuild the optimizer after changing trainable params");
    if (p.value.numel() == 0) continue;
    // U lives in a scratch buffer: unlike the reference, the gradient is left untouched.
    Tensor update = empty_like(s.momentum_buffer, {s.rows, s.cols});
    Tensor buffer = s.momentum_buffer.view({s.rows, s.cols});
    kernels::muon_momentum(p.grad.view({s.rows, s.cols}), buffer, update, beta, config_.nesterov, ema);
    kernels::newton_schulz(update, update, config_.ns);
    Tensor w = master_weight(p).view({s.rows, s.cols});
    const double plr = lr * p.lr_scale;
    if (config_.weight_decay != 0.0) kernels::scale_inplace(w, static_cast<float>(1.0 - plr * config_.weight_decay));
    kernels::axpy(static_cast<float>(-plr * update_scale(s.rows, s.cols)), update, w);
    refresh_value(p);  // mixed precision: the compute copy follows the master
  }
}

std::vector<NamedTensor> Muon::state() {
  std::vector<NamedTensor> out;
  for (Slot& s : slots_) out.push_back({s.param->name + ".momentum_buffer", s.momentum_buffer});
  return out;
}

}  // namespace anvil
