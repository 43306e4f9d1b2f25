// Distillation losses between a teacher's and a student's next-token distributions at a
// temperature T (models/distill_loss.h defines them): forward KL, reverse KL, total variation
// and Jensen-Shannon, the acceptance Σ min(p, q_f), and the gradient into the student logits.
// Row-wise in f32 (inputs f32, or bf16 on CUDA); nothing beyond a row is materialised.
//
// Per row, with a = z / T:
//   q   = softmax(a_student)                    (the student, unfiltered)
//   p   = softmax(a_teacher) over the teacher's kept set {z_teacher >= teacher_threshold}
//   q_f = softmax(a_student) over the student's kept set {z_student >= student_threshold}
//   dL/dz_j = (1/T) q_j (g_j − Σ_k q_k g_k), g = dL/dq: forward KL gives (q − p) / T;
//   reverse KL g = log q − log p; TVD g = −½ sign(p − q); JSD g = ½ log(q / m), m = (p + q) / 2.
// The filters are thresholds on the raw logits (ties with the threshold kept), computed from
// full rows by distill_filter_threshold; an undefined threshold tensor means no filter.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace anvil::kernels {

enum class Divergence { ForwardKL, ReverseKL, TVD, JSD };

struct DistillArgs {
  Divergence kind = Divergence::ForwardKL;
  float temperature = 1.0f;
  int ignore_index = -100;    // rows whose target is this are not scored (loss, α and gradient 0)
  Tensor teacher_threshold;   // f32 [N] or undefined: p's kept set is z_teacher >= threshold
  Tensor student_threshold;   // f32 [N] or undefined: q_f's kept set (acceptance only)
};

// threshold[i] = the smallest raw logit kept by top-k then top-p at temperature T on row i of
// logits [N, V] (full rows), as eval/generate.h's sampling rule; -inf when no filter is on
// (top_k 0 or >= V, top_p 1). Ties with the threshold are kept (generate keeps only the lower
// ids among tokens tied at a top-p cut: they differ only on exactly equal logits there).
void distill_filter_threshold(const Tensor& logits, float temperature, int64_t top_k, double top_p,
                              Tensor& threshold);

// Full rows: student, teacher [N, V] (dtypes may differ on CUDA), targets i32 [N]. Writes the
// per-row divergence losses[N] and acceptance[N] (f32, 0 on ignored rows); with write_grad,
// overwrites student with dL/dz (the unscaled gradient of the row's divergence, 0 on ignored rows).
void distill_forward(Tensor& student, const Tensor& teacher, const Tensor& targets, const DistillArgs& args,
                     Tensor& losses, Tensor& acceptance, bool write_grad);

// The local halves for a vocabulary shard (columns [vocab_start, vocab_start + Vs) of the full
// rows; the module combines the rows' statistics with collectives in between):
// 1. stats f32 [5, N]: over the shard, max a_student, Σ exp(a_student − that max), max a_teacher
//    over its kept set (-inf if none), Σ_kept exp(a_teacher − that max), Σ_kept_f exp(a_student − max a_student).
void distill_shard_stats(const Tensor& student, const Tensor& teacher, const DistillArgs& args, Tensor& stats);
// 2. norms f32 [3, N]: the global log-normalisers of q, p and q_f (in units of a). terms f32
//    [3, N]: the shard's part of the divergence, of the acceptance and of Σ q g (0 on ignored rows).
void distill_shard_terms(const Tensor& student, const Tensor& teacher, const Tensor& targets,
                         const DistillArgs& args, const Tensor& norms, Tensor& terms);
// 3. overwrites student with dL/dz on the shard; qg f32 [N]: the global Σ q g.
void distill_shard_grad(Tensor& student, const Tensor& teacher, const Tensor& targets, const DistillArgs& args,
                        const Tensor& norms, const Tensor& qg);

}  // namespace anvil::kernels
