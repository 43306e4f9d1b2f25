// DistillationLoss: the divergence between a frozen target's (teacher's) and a drafter's
// (student's) next-token distributions at the decoding temperature, with the decoder's top-k /
// top-p filters (ALGORITHMS.md §7: TempSpec, DistillSpec). A module beside CrossEntropyLoss: it
// scores (vocab-parallel) logits and hands back the gradient of the student's logits.
//
// Definitions, per scored token (targets != ignore_index), with T = temperature:
//   p = filter(softmax(z_teacher / T))  — the target's distribution after top-k, then top-p,
//       renormalised over the kept set (eval/generate.h's rule, ties kept as there);
//   q = softmax(z_student / T)          — the drafter's whole tempered distribution (unfiltered,
//       so mass it puts outside the target's kept set is penalised);
//   forward_kl  = Σ p log(p / q)
//   reverse_kl  = Σ q log(q / p)        (infinite outside p's support: refused with filters)
//   tvd         = ½ Σ |p − q|           (1 − tvd is the acceptance rate of speculative sampling)
//   jsd         = ½ KL(p ‖ m) + ½ KL(q ‖ m), m = (p + q) / 2
// No T² factor: the loss is the divergence itself. The reported loss is the mean over scored
// tokens (under sp over the sp group's tokens, as CrossEntropyLoss).
//
// acceptance: per scored token α = Σ_x min(p(x), q_f(x)), where q_f is the drafter's
// distribution filtered by its own top-k / top-p, as the speculative decoder would draw from it.
// forward() returns the sum of α over the scored tokens, for the simulated acceptance length τ.
//
// Memory: forward computes the (unscaled) gradient into the student's logits in place and keeps
// nothing of the teacher's logits, so a teacher's full distribution lives for one micro-batch's
// forward only; backward applies loss_scale / loss_tokens.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "models/cache.h"
#include "parallel/communicator.h"

namespace anvil {

enum class DivergenceKind { ForwardKL, ReverseKL, TVD, JSD };

// "forward_kl" | "reverse_kl" | "tvd" | "jsd"; throws naming the choices otherwise.
DivergenceKind parse_divergence(const std::string& name);
std::string divergence_name(DivergenceKind kind);

struct DistillSpec {
  DivergenceKind kind = DivergenceKind::ForwardKL;
  double temperature = 1.0;  // > 0
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off; in (0, 1]
  void validate() const;     // throws naming the field (distill.temperature, ...) and the fix
};

class DistillationLoss {
 public:
  // tp: the logits' vocabulary split (null: whole rows), vocab_start the first id of this rank's
  // shard, vocab_size the full vocabulary; sp: the mean is over the sp group's tokens.
  DistillationLoss(const DistillSpec& spec, Communicator* tp, int64_t vocab_start, int64_t vocab_size,
                   Communicator* sp);

  struct Result {
    float loss = 0;               // mean divergence over the scored tokens (sp group)
    double tokens = 0;            // scored tokens (sp group)
    double acceptance_sum = 0;    // Σ α over the scored tokens (sp group)
  };
  // student, teacher: logits [..., V / tp] in their compute dtypes (may differ), one row per
  // target; targets i32 [...]: rows whose target is ignore_index are not scored (their
  // gradient is 0). With for_backward, writes the gradient of the summed divergence into
  // `student` in place and saves it in c; otherwise changes nothing.
  Result forward(Tensor student, const Tensor& teacher, const Tensor& targets, Cache& c, int ignore_index = -100,
                 bool for_backward = true) const;
  // The gradient of loss_scale * (summed divergences) / loss_tokens with respect to the
  // student's logits (loss_tokens -1: the forward's own count), the saved tensor, scaled in
  // place and returned.
  Tensor backward(Cache& c, float loss_scale = 1.0f, int64_t loss_tokens = -1) const;

  const DistillSpec& spec() const { return spec_; }

 private:
  DistillSpec spec_;
  Communicator* tp_;
  int64_t vocab_start_, vocab_size_;
  Communicator* sp_;
};

}  // namespace anvil
