// Muon's fused momentum/Nesterov pass (ALGORITHMS.md 2a). The Newton–Schulz
// orthogonalisation Muon applies next is kernels/newton_schulz.h (shared with COSMOS).
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// Muon's momentum and the matrix NS is applied to, in one pass (grad is not modified):
//   ema (current muon.py):  B = beta B + (1-beta) G;  U = nesterov ? (1-beta) G + beta B : B
//   sum (older form, Moonlight): B = beta B + G;      U = nesterov ? G + beta B : B
// The sum form's U is 1/(1-beta) times the ema form's; NS normalises that away.
void muon_momentum(const Tensor& grad, Tensor& buffer, Tensor& update, float beta, bool nesterov, bool ema);

}  // namespace anvil::kernels
