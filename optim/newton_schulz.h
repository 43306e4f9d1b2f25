// Quintic Newton–Schulz orthogonalization (ALGORITHMS.md 2a), shared by COSMOS and
// Muon: O ≈ U V^T of G = U S V^T, singular values mapped into roughly [0.7, 1.2].
// Shared helper: the Muon/hybrid work should call this rather than keep its own copy.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace anvil {

struct NewtonSchulzConfig {
  int steps = 5;
  double a = 3.4445, b = -4.7750, c = 2.0315;
  double eps = 1e-7;  // X / (||X||_F + eps) before the iterations
  // Emulate the reference's bf16 arithmetic: operands rounded to bf16 (round to
  // nearest even), products accumulated in fp32, every op's result rounded to bf16,
  // exactly as torch evaluates `B = b*A + c*A@A; X = a*X + B@X` on bf16 tensors.
  // false: the whole iteration runs in the caller's precision (T).
  bool bf16 = true;
  // With bf16: also round a, b, c to bf16 (3.4375, -4.78125, 2.03125), as torch 1.13's
  // CPU kernels do with a Python scalar times a bf16 tensor. false keeps them in fp32,
  // as CUDA kernels compute scalar ops in fp32 ("opmath"), where the reference runs.
  bool bf16_coefficients = false;
};

// out = NS(g) for a row-major rows x cols matrix (out may alias g). Transposes
// internally when rows > cols so X X^T is the smaller Gram matrix (Muon's rule).
template <class T>
void newton_schulz(const T* g, T* out, int64_t rows, int64_t cols, const NewtonSchulzConfig& config);

// Tensor form for f32 2-D CPU tensors; returns a new f32 tensor.
Tensor newton_schulz(const Tensor& g, const NewtonSchulzConfig& config = {});

}  // namespace anvil
