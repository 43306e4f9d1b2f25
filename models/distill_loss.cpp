// DistillationLoss (models/distill_loss.h): the filters' thresholds, then the fused row kernel on
// whole rows, or under tp the shard kernels with the row statistics combined by collectives
// (as VocabParallelCrossEntropy); the sp group's mean as CrossEntropyLoss.
#include "models/distill_loss.h"

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/distill_loss.h"
#include "kernels/elementwise.h"
#include "parallel/data_parallel.h"
#include "parallel/tensor_parallel.h"

namespace anvil {

// The kernels take the module's enum by value.
static_assert(static_cast<int>(DivergenceKind::ForwardKL) == static_cast<int>(kernels::Divergence::ForwardKL) &&
              static_cast<int>(DivergenceKind::ReverseKL) == static_cast<int>(kernels::Divergence::ReverseKL) &&
              static_cast<int>(DivergenceKind::TVD) == static_cast<int>(kernels::Divergence::TVD) &&
              static_cast<int>(DivergenceKind::JSD) == static_cast<int>(kernels::Divergence::JSD));

namespace {

constexpr const char* kDivergenceChoices = "forward_kl, reverse_kl, tvd or jsd";

bool active(const Communicator* c) { return c != nullptr && c->size() > 1; }

bool filters_on(const DistillSpec& s) { return s.top_k > 0 || s.top_p < 1.0; }

// Each row's keep threshold of the top-k / top-p filter, from full rows: under tp the shards
// are gathered first (one micro-batch's logits, freed on return). Undefined when no filter is on.
Tensor filter_threshold(Communicator* tp, const DistillSpec& s, const Tensor& rows) {
  if (!filters_on(s)) return Tensor();
  const Tensor full = active(tp) ? GatherFromTensorParallelRegion::forward(tp, rows) : rows;
  Tensor threshold = empty_like(rows, {rows.size(0)}, DType::F32);
  kernels::distill_filter_threshold(full, static_cast<float>(s.temperature), s.top_k, s.top_p, threshold);
  return threshold;
}

// Combines the shards' row statistics [5, N] (kernels/distill_loss.h) into the global
// log-normalisers [3, N] of q, p and q_f: the maxima by an all-reduce, the sums rescaled to
// them on the host (O(N) scalar work) and summed by a second all-reduce.
Tensor global_norms(Communicator* tp, const Tensor& stats) {
  const int64_t N = stats.size(1);
  Tensor maxima = empty_like(stats, {2, N}, DType::F32);
  maxima.select(0, 0).copy_(stats.select(0, 0));
  maxima.select(0, 1).copy_(stats.select(0, 2));
  tp->all_reduce(maxima, ReduceOp::Max);
  const Tensor host_stats = stats.to(Device::cpu()), host_max = maxima.to(Device::cpu());
  const float* s = host_stats.data<float>();
  const float* g = host_max.data<float>();
  Tensor sums = Tensor::empty({3, N});
  float* out = sums.data<float>();
  // A shard with nothing kept has max -inf and sum 0: it adds 0 (exp(-inf - -inf) is NaN).
  auto rescaled = [](float sum, float local_max, float global_max) {
    return sum == 0.0f ? 0.0f : sum * std::exp(local_max - global_max);
  };
  for (int64_t i = 0; i < N; ++i) {
    out[i] = rescaled(s[N + i], s[i], g[i]);                   // q
    out[N + i] = rescaled(s[3 * N + i], s[2 * N + i], g[N + i]);  // p
    out[2 * N + i] = rescaled(s[4 * N + i], s[i], g[i]);       // q_f
  }
  tp->all_reduce(sums);
  Tensor norms = Tensor::empty({3, N});
  float* n = norms.data<float>();
  for (int64_t i = 0; i < N; ++i) {
    n[i] = g[i] + std::log(out[i]);
    n[N + i] = g[N + i] + std::log(out[N + i]);
    n[2 * N + i] = g[i] + std::log(out[2 * N + i]);
  }
  return stats.device().is_cuda() ? norms.to(stats.device()) : norms;
}

}  // namespace

DivergenceKind parse_divergence(const std::string& name) {
  if (name == "forward_kl") return DivergenceKind::ForwardKL;
  if (name == "reverse_kl") return DivergenceKind::ReverseKL;
  if (name == "tvd") return DivergenceKind::TVD;
  if (name == "jsd") return DivergenceKind::JSD;
  ANVIL_FAIL("distill.loss: unknown divergence '", name, "' — choose ", kDivergenceChoices);
}

std::string divergence_name(DivergenceKind kind) {
  switch (kind) {
    case DivergenceKind::ForwardKL: return "forward_kl";
    case DivergenceKind::ReverseKL: return "reverse_kl";
    case DivergenceKind::TVD: return "tvd";
    case DivergenceKind::JSD: return "jsd";
  }
  return "unknown";
}

void DistillSpec::validate() const {
  ANVIL_CHECK(std::isfinite(temperature) && temperature > 0, "distill.temperature: ", temperature,
              " must be finite and > 0 — use the decoding temperature (greedy decoding: a small one such as 0.1)");
  ANVIL_CHECK(top_k >= 0, "distill.top_k: ", top_k, " must be >= 0 — 0 turns the filter off");
  ANVIL_CHECK(top_p > 0 && top_p <= 1, "distill.top_p: ", top_p, " must lie in (0, 1] — 1 turns the filter off");
  ANVIL_CHECK(!(kind == DivergenceKind::ReverseKL && filters_on(*this)),
              "distill.loss: reverse_kl is infinite where the filtered target has no mass — use tvd or jsd with "
              "distill.top_k/top_p, or turn the filters off");
}

DistillationLoss::DistillationLoss(const DistillSpec& spec, Communicator* tp, int64_t vocab_start, int64_t vocab_size,
                                   Communicator* sp)
    : spec_(spec), tp_(tp), vocab_start_(vocab_start), vocab_size_(vocab_size), sp_(sp) {
  spec_.validate();
}

DistillationLoss::Result DistillationLoss::forward(Tensor student, const Tensor& teacher, const Tensor& targets,
                                                   Cache& c, int ignore_index, bool for_backward) const {
  check_dtype(targets, DType::I32, "distillation targets");
  const int64_t N = targets.numel(), Vs = student.size(-1);
  ANVIL_CHECK(student.shape() == teacher.shape(), "distillation loss: the student's logits ", student.describe(),
              " and the teacher's ", teacher.describe(),
              " differ in shape — drafter and target must share the vocabulary (and its tp split)");
  ANVIL_CHECK(student.numel() == N * Vs, "distillation loss: logits ", student.describe(),
              " do not have one row per target of ", targets.describe());
  const int64_t full_vocab = active(tp_) ? Vs * tp_->size() : Vs;
  ANVIL_CHECK(full_vocab == vocab_size_, "distillation loss: logits ", student.describe(), " cover ", full_vocab,
              " tokens but the vocabulary has ", vocab_size_, " — check model.vocab_size against the checkpoint");
  ANVIL_CHECK(!active(tp_) || vocab_start_ == tp_->rank() * Vs, "distillation loss: this rank's vocabulary shard starts at ",
              vocab_start_, " but rank ", active(tp_) ? tp_->rank() : 0, " of tp holds columns from ",
              active(tp_) ? tp_->rank() * Vs : 0, " — pass vocab_shard_start(tp, vocab_size)");
  ANVIL_CHECK(student.is_contiguous(), "distillation loss: the student's logits ", student.describe(),
              " must be contiguous (the gradient is written over them)");
  Tensor q = student.view({N, Vs});
  const Tensor p = teacher.contiguous().view({N, Vs});
  const Tensor flat_targets = targets.contiguous().view({N});
  const Tensor host_targets = flat_targets.to(Device::cpu());
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) count += host_targets.data<int32_t>()[i] != ignore_index;

  kernels::DistillArgs args;
  args.kind = static_cast<kernels::Divergence>(spec_.kind);
  args.temperature = static_cast<float>(spec_.temperature);
  args.ignore_index = ignore_index;
  args.teacher_threshold = filter_threshold(tp_, spec_, p);
  args.student_threshold = filter_threshold(tp_, spec_, q);
  Tensor losses = empty_like(q, {N}, DType::F32), acceptance = empty_like(q, {N}, DType::F32);
  if (!active(tp_)) {
    kernels::distill_forward(q, p, flat_targets, args, losses, acceptance, for_backward);
  } else {
    Tensor stats = empty_like(q, {5, N}, DType::F32);
    kernels::distill_shard_stats(q, p, args, stats);
    const Tensor norms = global_norms(tp_, stats);
    Tensor terms = empty_like(q, {3, N}, DType::F32);  // [loss, acceptance, Σ q g] parts: one all-reduce
    kernels::distill_shard_terms(q, p, flat_targets, args, norms, terms);
    tp_->all_reduce(terms);
    if (for_backward) kernels::distill_shard_grad(q, p, flat_targets, args, norms, terms.select(0, 2));
    losses = terms.select(0, 0);
    acceptance = terms.select(0, 1);
  }
  double loss_sum = kernels::sum(losses), acceptance_sum = kernels::sum(acceptance), tokens = static_cast<double>(count);
  if (sp_) {
    const std::vector<double> group = all_reduce_sum(*sp_, {loss_sum, tokens, acceptance_sum});
    loss_sum = group[0];
    tokens = group[1];
    acceptance_sum = group[2];
  }
  if (for_backward) {
    c["dstudent"] = student;
    c["count"] = Tensor::full({1}, tokens, DType::I64);
  }
  Result r;
  r.loss = tokens > 0 ? static_cast<float>(loss_sum / tokens) : 0.0f;
  r.tokens = tokens;
  r.acceptance_sum = acceptance_sum;
  return r;
}

Tensor DistillationLoss::backward(Cache& c, float loss_scale, int64_t loss_tokens) const {
  Tensor d = c.get("dstudent");
  const double count = loss_tokens >= 0 ? static_cast<double>(loss_tokens) : c.get("count").item();
  kernels::scale_inplace(d, count > 0 ? static_cast<float>(loss_scale / count) : 0.0f);
  return d;
}

}  // namespace anvil
