// Quintic Newton–Schulz orthogonalisation (ALGORITHMS.md 2a): O ≈ U V^T of
// G = U S V^T, every singular value s pushed through s <- a*s + b*s^3 + c*s^5 `steps`
// times, which maps (0, 1] into roughly [0.7, 1.2]. The one implementation in anvil:
// Muon runs it in fp32, COSMOS in emulated bf16 (its reference's arithmetic), tests
// in fp64. Which precision an optimizer uses by default is that optimizer's config
// (MuonConfig::ns, CosmosConfig::newton_schulz), not this header's.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace anvil::kernels {

struct NewtonSchulzConfig {
  int steps = 5;
  double a = 3.4445, b = -4.7750, c = 2.0315;  // Keller Jordan's coefficients
  double eps = 1e-7;                           // X = G / (||G||_F + eps) before the iterations
  // false: every op runs in the caller's precision T (fp32: OpenBLAS sgemm; fp64: dgemm).
  // true: emulate the reference's bf16 arithmetic: operands rounded to bf16 (round to
  // nearest even), products accumulated in T (fp32 for float), every op's result
  // rounded to bf16, exactly as torch evaluates `X = X / (X.norm() + eps)`,
  // `A = X @ X.T; B = b*A + c*A@A; X = a*X + B@X` on bf16 tensors. The output then
  // holds bf16 values (stored in T).
  bool bf16 = false;
  // With bf16: also round a, b, c to bf16 (3.4375, -4.78125, 2.03125), as torch 1.13's
  // CPU kernels do with a Python scalar times a bf16 tensor. false keeps them in fp32,
  // as CUDA kernels compute scalar ops in fp32 ("opmath"), where the reference runs.
  bool bf16_coefficients = false;
};

// out = NS(g) for a contiguous row-major rows x cols matrix of float or double (out
// may alias g). The Gram matrix is always the smaller side (Muon's tall/wide rule:
// the reference transposes when rows > cols); the tall case runs A = X^T X,
// X = a X + X B, which is the transposed iteration without the two copies. Workspace
// (two rows x cols buffers and two min(rows, cols)^2 ones) comes from cpu_allocator().
template <class T>
void newton_schulz(const T* g, T* out, int64_t rows, int64_t cols, const NewtonSchulzConfig& cfg = {});

// Tensor forms for a 2-D f32 CPU tensor (any strides). out: same shape, may be u itself.
void newton_schulz(const Tensor& u, Tensor& out, const NewtonSchulzConfig& cfg = {});
Tensor newton_schulz(const Tensor& u, const NewtonSchulzConfig& cfg = {});

}  // namespace anvil::kernels
