// LMDrafter: a standalone TransformerLM proposing draft tokens (see eval/drafter.h).
#include <algorithm>

#include "eval/drafter.h"

namespace anvil {

void LMDrafter::begin(const DraftSetup& setup) {
  check_draft_setup(setup, "LMDrafter");
  const int64_t B = static_cast<int64_t>(setup.prompts.size());
  kv_ = std::make_unique<KVCache>(model_.config(), B, setup.max_len, model_.device(), model_.compute_dtype());
  rows_.begin(setup);
  prefill_prompts(model_, *kv_, rows_);
}

DraftBlock LMDrafter::propose(uint32_t round, const std::vector<bool>& active) {
  ANVIL_CHECK(kv_ != nullptr, "LMDrafter: propose() before begin()");
  const int64_t B = kv_->batch(), V = model_.config().vocab_size;
  const int gamma = rows_.setup.gamma;
  DraftBlock block = rows_.empty_block(V);
  std::vector<std::vector<int32_t>>& committed = rows_.committed;
  // Every row feeds the same number of pending tokens: the most any active row has.
  int64_t pending = 1;
  for (int64_t b = 0; b < B; ++b)
    if (active[b]) pending = std::max<int64_t>(pending, static_cast<int64_t>(committed[b].size()) - rows_.fed[b]);
  Tensor ids = Tensor::empty({B, pending}, DType::I32);
  for (int64_t b = 0; b < B; ++b) {
    int32_t* row = ids.data<int32_t>() + b * pending;
    if (!active[b]) {  // a finished row rides along from slot 0 on placeholders, so it never runs out of room
      kv_->truncate(b, 0);
      std::fill(row, row + pending, committed[b].back());
      continue;
    }
    const int64_t length = static_cast<int64_t>(committed[b].size());
    kv_->truncate(b, length - pending);  // a row with fewer pending tokens re-feeds its latest committed ones
    std::copy(committed[b].end() - pending, committed[b].end(), row);
    rows_.fed[b] = length;
  }
  Tensor logits = host_f32(model_.forward_cached(ids.to(model_.device()), *kv_, /*last_position_only=*/true));
  block.forwards = 1;
  Tensor step_ids = Tensor::empty({B, 1}, DType::I32);
  for (int i = 0; i < gamma; ++i) {
    for (int64_t b = 0; b < B; ++b)
      step_ids.data<int32_t>()[b] = rows_.draft(block, b, i, logits.data<float>() + b * V, active[b], round);
    if (i + 1 == gamma) break;  // the last draft is never fed: the verifier may reject it
    logits = host_f32(model_.forward_cached(step_ids.to(model_.device()), *kv_));
    ++block.forwards;
  }
  rows_.drafted = block.tokens;
  return block;
}

void LMDrafter::commit(const std::vector<bool>& active, const std::vector<int>& accepted,
                       const std::vector<int32_t>& next) {
  const int64_t B = kv_->batch();
  const int gamma = rows_.setup.gamma;
  for (int64_t b = 0; b < B; ++b) {
    if (!active[b]) continue;  // nothing committed; propose() restarts it from slot 0
    const int64_t length = static_cast<int64_t>(rows_.committed[b].size());
    rows_.commit(b, accepted[b], next[b], "LMDrafter");
    // The cache holds the committed tokens and drafts 1..gamma-1 (the last was never fed).
    rows_.fed[b] = length + std::min(accepted[b], gamma - 1);
    kv_->truncate(b, rows_.fed[b]);
  }
}

}  // namespace anvil
