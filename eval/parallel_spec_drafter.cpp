// ParallelSpecDrafter: γ draft tokens from one forward over [committed tokens, masks]
// (see eval/parallel_spec_drafter.h).
#include "eval/parallel_spec_drafter.h"

#include <algorithm>


namespace anvil {

ParallelSpecDrafter::ParallelSpecDrafter(TransformerLM& model) : ModelDrafter(model) {
  ANVIL_CHECK(model.mask_tokens() >= 1, "ParallelSpecDrafter: the model has no mask tokens — load a drafter trained "
              "with distill.drafter: parallelspec");
}

void ParallelSpecDrafter::begin(const DraftSetup& setup) {
  check_draft_setup(setup, "ParallelSpecDrafter");
  ANVIL_CHECK(setup.gamma <= model_.mask_tokens() + 1, "ParallelSpecDrafter: gamma ", setup.gamma, " is more than the "
              "drafter's ", model_.mask_tokens(), " mask tokens + 1 can propose in one forward — use gamma <= ",
              model_.mask_tokens() + 1, " or train with a larger distill.parallel_tokens");
  const int64_t B = static_cast<int64_t>(setup.prompts.size());
  // Room for a short row padded after its masks (propose), within the model's positions.
  const int64_t room = std::min(setup.max_len + setup.gamma + 1, model_.config().max_position_embeddings);
  kv_ = std::make_unique<KVCache>(model_.config(), B, std::max(room, setup.max_len), model_.device(),
                                  model_.compute_dtype());
  rows_.begin(setup);
  prefill_prompts(model_, *kv_, rows_);
}

DraftBlock ParallelSpecDrafter::propose(uint32_t round, const std::vector<bool>& active) {
  ANVIL_CHECK(kv_ != nullptr, "ParallelSpecDrafter: propose() before begin()");
  const int64_t B = kv_->batch(), V = model_.config().vocab_size;
  const int gamma = rows_.setup.gamma;
  const int64_t masks = gamma - 1, max_position = model_.config().max_position_embeddings - 1;
  std::vector<std::vector<int32_t>>& committed = rows_.committed;
  // Every row's call has the same width: the most pending real tokens of any active row, then
  // the masks. A row with fewer pending tokens re-feeds earlier committed ones (rolled back
  // first); a row shorter than that (early on) is padded after its masks instead, where causal
  // attention hides the padding from everything that is read.
  int64_t pending = 1;
  for (int64_t b = 0; b < B; ++b)
    if (active[b]) pending = std::max<int64_t>(pending, static_cast<int64_t>(committed[b].size()) - rows_.fed[b]);
  const int64_t W = pending + masks;
  Tensor ids = Tensor::empty({B, W}, DType::I32), positions = Tensor::empty({B, W}, DType::I32);
  std::vector<int64_t> last(static_cast<size_t>(B), 0);  // the column of row b's last committed token
  bool padded = false;
  for (int64_t b = 0; b < B; ++b) {
    int32_t* row = ids.data<int32_t>() + b * W;
    int32_t* pos = positions.data<int32_t>() + b * W;
    if (!active[b]) {  // a finished row rides along from slot 0 on placeholders, so it never runs out of room
      kv_->truncate(b, 0);
      std::fill(row, row + W, committed[b].back());
      for (int64_t j = 0; j < W; ++j) pos[j] = static_cast<int32_t>(std::min(j, max_position));
      continue;
    }
    const int64_t length = static_cast<int64_t>(committed[b].size());
    const int64_t start = std::max<int64_t>(0, length - pending), real = length - start;
    kv_->truncate(b, start);
    std::copy(committed[b].begin() + start, committed[b].end(), row);
    for (int64_t i = 0; i < masks; ++i) row[real + i] = model_.mask_token_id(i);
    for (int64_t j = real + masks; j < W; ++j) row[j] = committed[b].back(), padded = true;
    for (int64_t j = 0; j < W; ++j) pos[j] = static_cast<int32_t>(std::min(start + j, max_position));
    last[b] = real - 1;
  }
  if (padded) kv_->set_positions(positions);  // the padding may run past the model's positions: clamp it
  Tensor logits = host_f32(model_.forward_cached(ids.to(model_.device()), *kv_));  // [B, W, V]
  DraftBlock block = rows_.empty_block(V);
  block.forwards = 1;
  for (int64_t b = 0; b < B; ++b) {
    for (int i = 0; i < gamma; ++i)  // an inactive row's placeholders never read its logits
      rows_.draft(block, b, i, logits.data<float>() + (b * W + last[b] + i) * V, active[b], round);
    if (!active[b]) continue;
    rows_.fed[b] = static_cast<int64_t>(committed[b].size());
    kv_->truncate(b, rows_.fed[b]);  // the masks (and any padding) leave the cache: only real tokens stay
  }
  rows_.drafted = block.tokens;
  return block;
}

void ParallelSpecDrafter::commit(const std::vector<bool>& active, const std::vector<int>& accepted,
                                 const std::vector<int32_t>& next) {
  // No draft token was ever fed: the accepted ones and the next token are all pending.
  for (int64_t b = 0; b < kv_->batch(); ++b)
    if (active[b]) rows_.commit(b, accepted[b], next[b], "ParallelSpecDrafter");
}

std::unique_ptr<Drafter> make_model_drafter(TransformerLM& model) {
  if (model.mask_tokens() > 0) return std::make_unique<ParallelSpecDrafter>(model);
  return std::make_unique<LMDrafter>(model);
}

}  // namespace anvil
