// COSMOS (ALGORITHMS.md 1; following lliu606/COSMOS's code where it and the paper
// differ): for each eligible m x n matrix, Adam on a rank-r leading eigen-subspace
// of an EMA of G^T G (tracked by one power-iteration + QR step per update), Muon
// (Newton–Schulz) on the residual, and a fixed-Frobenius-norm step of lr*lr_ratio*sqrt(mn).
// Everything else (1-D, embeddings, rows > max_rows) takes an Adam branch at the full lr.
#pragma once
#include <cstdint>

#include "kernels/newton_schulz.h"
#include "optim/optimizer.h"

namespace anvil {

struct CosmosConfig {
  double beta1 = 0.9;    // momentum M <- beta1*M + G (undamped) and the Adam branch's beta1
  double beta2 = 0.999;  // second moment V, subspace EMA (basis and S), Adam branch's beta2
  double eps = 1e-8;
  double lr_ratio = 0.1;  // rho: the matrix branch's step is lr*rho*sqrt(mn) in Frobenius norm
  int64_t rank = 64;      // r; clamped to n = size(1) (the reference cannot run with r > n)
  double weight_decay = 0.0;  // decoupled, W *= 1 - lr*wd BEFORE the step (not lr*rho*wd)
  double gamma = 0.2;         // weight of the normalized Muon part
  bool nesterov = true;       // (spelled `nestrov` in the reference code)
  // The reference's eligibility test: 2-D and size(0) <= max_rows (so an LM head
  // or embedding with vocab <= max_rows would go through the matrix branch).
  int64_t max_rows = 10000;
  // true: only ParamRole::Matrix params may take the matrix branch (embeddings and
  // heads are routed by role, not by the vocab threshold). false: shape only, as the reference.
  bool route_by_role = true;
  // Adam-branch quirk of the reference: M <- beta1*M + 0.1*G with bias correction
  // 1 - 0.9^t (a 2x larger steady-state step at beta1 = 0.95). false: standard AdamW.
  bool reference_compat = false;
  // Decay roles, as AdamWConfig: Matrix params always; these opt the others in (the
  // reference decays every param in a group).
  bool decay_embeddings = false;
  bool decay_vectors = false;
  // 5 steps in emulated bf16 with fp32 coefficients, as the reference on CUDA (bf16 = false: fp32/fp64).
  kernels::NewtonSchulzConfig newton_schulz = default_newton_schulz();

  static kernels::NewtonSchulzConfig default_newton_schulz() {
    kernels::NewtonSchulzConfig ns;
    ns.bf16 = true;
    return ns;
  }
};

// One matrix-branch update on raw row-major buffers of precision T (the optimizer
// uses float; tests run double for the fp64 checks). w, m: rows x cols; v: rows x r;
// p: cols x r; s: r x r; g is read only. t is the 1-based step.
template <class T>
struct CosmosMatrix {
  T* w;
  const T* g;
  T* m;
  T* v;
  T* p;
  T* s;
  int64_t rows, cols, rank;
};
template <class T>
void cosmos_matrix_step(const CosmosMatrix<T>& x, int64_t t, const CosmosConfig& cfg, double lr);

class Cosmos : public Optimizer {
 public:
  Cosmos(std::vector<Param*> params, const CosmosConfig& config);
  const char* name() const override { return "cosmos"; }
  void step(double lr) override;
  // "<param>.exp_avg" (M), and "<param>.exp_avg_sq" (V: rows x r for matrices,
  // the param's shape otherwise); matrices add "<param>.exp_avg_P" (P, cols x r)
  // and "<param>.exp_avg_GG" (S, r x r). The reference's names, so states convert.
  std::vector<NamedTensor> state() override;
  int64_t step_count() const override { return steps_; }
  void set_step_count(int64_t steps) override { steps_ = steps; }

  // Whether `p` takes the matrix branch under this config, and its effective rank.
  bool uses_matrix_branch(const Param& p) const;
  int64_t effective_rank(const Param& p) const;
  double decay_for(const Param& p) const;

 private:
  struct Slot {
    Param* param;
    bool matrix;
    Tensor exp_avg, exp_avg_sq, basis, basis_gram;
  };
  CosmosConfig config_;
  std::vector<Slot> slots_;
  int64_t steps_ = 0;
};

}  // namespace anvil
