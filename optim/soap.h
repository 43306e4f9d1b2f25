// SOAP (ALGORITHMS.md 2b, nikhilvyas/SOAP's current code): Adam run in the
// eigenbasis of Shampoo's Kronecker factors L = EMA(G G^T), R = EMA(G^T G). The
// bases come from an eigendecomposition at the first call and are refreshed every
// precondition_frequency steps by one power-iteration step, Q <- QR(L Q).Q.
//
// 1-D params (and any side longer than max_precond_dim) get no rotation, so a 1-D
// param is plain Adam with SOAP's conventions (eps on the un-corrected sqrt(V),
// decay after the step, first call a no-op), exactly as the reference. A hybrid
// that prefers AdamW for vectors/embeddings simply does not hand them to SOAP.
#pragma once
#include <cstdint>

#include "optim/optimizer.h"

namespace anvil {

struct SoapConfig {
  double beta1 = 0.95;
  double beta2 = 0.95;
  double shampoo_beta = -1;  // < 0: use beta2 (the reference's default)
  double eps = 1e-8;
  double weight_decay = 0.01;  // decoupled, applied AFTER the step: W -= lr*wd*W
  int64_t precondition_frequency = 10;
  int64_t max_precond_dim = 10000;  // a longer side gets no factor (identity rotation)
  bool correct_bias = true;
  // Decay roles, as AdamWConfig: Matrix params always; these opt the others in
  // (the reference decays every param of a group).
  bool decay_embeddings = false;
  bool decay_vectors = false;
  // Not implemented (the reference's defaults): merge_dims, precondition_1d, normalize_grads.
};

class Soap : public Optimizer {
 public:
  Soap(std::vector<Param*> params, const SoapConfig& config);
  const char* name() const override { return "soap"; }
  // The first call only builds L, R and their eigenbases from its gradient and
  // leaves the weights alone; call k > 1 is SOAP step t = k - 1 (bias correction,
  // refresh schedule).
  void step(double lr) override;
  // Per param: "<param>.exp_avg" (M, kept in the rotated basis), "<param>.exp_avg_sq",
  // and per preconditioned side "<param>.GG_left"/"GG_right" (L, R) and
  // "<param>.Q_left"/"Q_right" (their eigenbases).
  std::vector<NamedTensor> state() override;
  // Calls made (the first only initializes); SOAP's own step t is step_count() - 1.
  int64_t step_count() const override { return calls_; }
  void set_step_count(int64_t steps) override { calls_ = steps; }

  double decay_for(const Param& p) const;

 private:
  struct Slot {
    Param* param;
    int64_t rows, cols;  // a 1-D param of n elements is 1 x n with no preconditioned side
    Tensor exp_avg, exp_avg_sq;
    Tensor gg_left, gg_right, q_left, q_right;  // undefined for a side without a factor
  };
  void initialize(Slot& s, const float* g);
  void update(Slot& s, const float* g, int64_t t, double lr);
  // out = Q_L^T x Q_R (rotate = true) or Q_L x Q_R^T (false), identity on absent sides.
  void change_basis(const Slot& s, const float* x, float* out, bool rotate) const;
  void accumulate_factors(Slot& s, const float* g) const;
  // Sort Q's columns by diag(Q^T L Q) descending, permute V's matching axis, Q <- QR(L Q).
  void refresh_basis(Slot& s, bool left);

  SoapConfig config_;
  std::vector<Slot> slots_;
  int64_t calls_ = 0;
};

}  // namespace anvil
