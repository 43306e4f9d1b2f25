// Muon: momentum + Newton–Schulz orthogonalised updates for 2-D hidden weight
// matrices (ALGORITHMS.md 2a). Embeddings, heads and vectors belong to AdamW;
// HybridOptimizer (optim/hybrid.h) does that routing.
// Differences from KellerJordan/Muon, on purpose: NS runs in fp32 by default (the
// reference casts to bf16; there is no bf16 GEMM on the CPU backend, and fp32 sits
// closer to the fp64 ideal; ns.bf16 = true emulates the reference's bf16), and the
// gradient is left untouched (the reference overwrites it with U).
#pragma once
#include <string>

#include "kernels/newton_schulz.h"
#include "optim/optimizer.h"

namespace anvil {

// How the orthogonalised update is scaled per matrix (rows = size(0), cols = the rest).
enum class MuonScale {
  Keller,     // sqrt(max(1, rows/cols)), lr ~ 0.02 (KellerJordan/Muon)
  Moonlight,  // 0.2 * sqrt(max(rows, cols)): update RMS matched to AdamW's, lr/wd shared with it
};
// Which momentum recurrence (identical updates after NS; the stored buffers differ by 1/(1-beta)).
enum class MuonMomentum {
  Ema,  // B = beta B + (1-beta) G, U = (1-beta) G + beta B   (current muon.py)
  Sum,  // B = beta B + G,          U = G + beta B             (older muon.py, Moonlight)
};

// "keller" | "moonlight" and "ema" | "sum"; throw an Error listing the choices otherwise.
MuonScale parse_muon_scale(const std::string& s);
MuonMomentum parse_muon_momentum(const std::string& s);
const char* muon_scale_name(MuonScale s);
const char* muon_momentum_name(MuonMomentum m);

struct MuonConfig {
  double momentum = 0.95;
  bool nesterov = true;
  double weight_decay = 0.0;  // decoupled, with the unscaled lr: W *= 1 - lr * wd, before the update
  MuonScale scale = MuonScale::Keller;
  MuonMomentum momentum_form = MuonMomentum::Ema;
  kernels::NewtonSchulzConfig ns;  // 5 steps, (3.4445, -4.7750, 2.0315), eps 1e-7, fp32 (bf16 = false)

  // Throws naming the field when a value is out of range.
  void validate() const;
};

class Muon : public Optimizer {
 public:
  // Every trainable param must have f32 weights (under mixed precision its f32 master: the
  // update goes there and refresh_value rounds it into the value) and at least 2 dims (more
  // than 2 are viewed as [size(0), rest], like conv filters); frozen params get no state.
  Muon(std::vector<Param*> params, const MuonConfig& config);
  const char* name() const override { return "muon"; }
  // Per param: momentum, U, O = NS(U); W *= 1 - lr*wd; W -= lr * scale(shape) * O.
  void step(double lr) override;
  // "<param>.momentum_buffer" per trainable param.
  std::vector<NamedTensor> state() override;
  int64_t step_count() const override { return steps_; }
  void set_step_count(int64_t steps) override { steps_ = steps; }

  // The factor the orthogonalised update of a rows x cols matrix is multiplied by.
  double update_scale(int64_t rows, int64_t cols) const;
  const MuonConfig& config() const { return config_; }

 private:
  struct Slot {
    Param* param;
    Tensor momentum_buffer;
    int64_t rows, cols;  // the 2-D view NS runs on
  };
  MuonConfig config_;
  std::vector<Slot> slots_;
  int64_t steps_ = 0;
};

}  // namespace anvil
