// Muon's kernels: the fused momentum/Nesterov pass and Newton–Schulz quintic
// orthogonalisation (ALGORITHMS.md 2a). COSMOS reuses newton_schulz for its
// Muon-on-the-rest part.
#pragma once
#include "core/tensor.h"

namespace anvil::kernels {

// Each singular value s follows s <- a*s + b*s^3 + c*s^5 (Keller Jordan's coefficients).
struct NewtonSchulzConfig {
  int steps = 5;
  float a = 3.4445f, b = -4.7750f, c = 2.0315f;
  float eps = 1e-7f;  // X / (||X||_F + eps)
};

// out = NS(u) for a 2-D f32 tensor u (out: same shape, may be u itself).
// X = u / (||u||_F + eps); `steps` times: A = X X^T, B = b A + c A A, X = a X + B X.
// When rows > cols the reference transposes so that the Gram matrix is the smaller
// one; here the tall case runs A = X^T X, X = a X + X B instead, which is the
// transposed iteration without the two copies. Runs in fp32 (the reference runs
// in bf16 on GPU; tests compare against an fp64 reference).
void newton_schulz(const Tensor& u, Tensor& out, const NewtonSchulzConfig& cfg = {});

// Muon's momentum and the matrix NS is applied to, in one pass (grad is not modified):
//   ema (current muon.py):  B = beta B + (1-beta) G;  U = nesterov ? (1-beta) G + beta B : B
//   sum (older form, Moonlight): B = beta B + G;      U = nesterov ? G + beta B : B
// The sum form's U is 1/(1-beta) times the ema form's; NS normalises that away.
void muon_momentum(const Tensor& grad, Tensor& buffer, Tensor& update, float beta, bool nesterov, bool ema);

}  // namespace anvil::kernels
