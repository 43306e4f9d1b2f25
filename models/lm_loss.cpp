#include "models/lm_loss.h"

#include "kernels/elementwise.h"
#include "parallel/data_parallel.h"
#include "parallel/tensor_parallel.h"

namespace anvil {

CrossEntropyLoss::CrossEntropyLoss(Communicator* tp, int64_t vocab_start, int64_t vocab_size, Communicator* sp)
    : tp_(tp), vocab_start_(vocab_start), vocab_size_(vocab_size), sp_(sp) {}

float CrossEntropyLoss::forward(const Tensor& logits, const Tensor& targets, Cache& c, int ignore_index) const {
  check_dtype(targets, DType::I32, "targets");
  const int64_t N = targets.numel();
  ANVIL_CHECK(logits.numel() == N * logits.size(-1), "cross-entropy: logits ", logits.describe(),
              " do not have one row per target of ", targets.describe());
  Tensor losses = empty_like(logits, {N}, DType::F32), lse = empty_like(logits, {N}, DType::F32);
  const Tensor flat_targets = targets.contiguous().view({N});
  const int64_t count = VocabParallelCrossEntropy::forward(tp_, logits.view({N, logits.size(-1)}), vocab_start_,
                                                           vocab_size_, flat_targets, ignore_index, losses, lse);
  double loss_sum = kernels::sum(losses), tokens = static_cast<double>(count);
  if (sp_) {
    // The mean over the whole sequences: every sp rank divides by the group's token count.
    const std::vector<double> group = all_reduce_sum(*sp_, {loss_sum, tokens});
    loss_sum = group[0];
    tokens = group[1];
  }
  c["logits"] = logits;
  c["targets"] = flat_targets;
  c["lse"] = lse;
  c["count"] = Tensor::full({1}, tokens, DType::I64);
  c["ignore_index"] = Tensor::full({1}, ignore_index, DType::I32);
  return tokens > 0 ? static_cast<float>(loss_sum / tokens) : 0.0f;
}

double CrossEntropyLoss::token_count(const Cache& c) { return c.get("count").item(); }

Tensor CrossEntropyLoss::backward(Cache& c, float loss_scale, int64_t loss_tokens) const {
  Tensor logits = c.get("logits");
  const double count = loss_tokens >= 0 ? static_cast<double>(loss_tokens) : token_count(c);
  Tensor flat = logits.view({-1, logits.size(-1)});
  VocabParallelCrossEntropy::backward(tp_, flat, vocab_start_, c.get("targets"), c.get("lse"),
                                      static_cast<int>(c.get("ignore_index").item()),
                                      count > 0 ? static_cast<float>(loss_scale / count) : 0.0f, flat);  // in place
  return logits;
}

}  // namespace anvil
