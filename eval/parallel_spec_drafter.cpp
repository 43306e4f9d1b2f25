// ParallelSpecDrafter: γ draft tokens from one forward over [committed tokens, masks]
// (see eval/parallel_spec_drafter.h).
#include "eval/parallel_spec_drafter.h"

#include <algorithm>

#include "eval/speculative.h"

namespace anvil {

ParallelSpecDrafter::ParallelSpecDrafter(TransformerLM& model) : model_(model) {
  ANVIL_CHECK(model.mask_tokens() >= 1, "ParallelSpecDrafter: the model has no mask tokens — load a drafter trained "
              "with distill.drafter: parallelspec");
}

void ParallelSpecDrafter::begin(const DraftSetup& setup) {
  ANVIL_CHECK(setup.gamma >= 1 && !setup.prompts.empty() && setup.sequences.size() == setup.prompts.size(),
              "ParallelSpecDrafter: a batch needs gamma >= 1 and one RNG sequence per prompt");
  ANVIL_CHECK(setup.gamma <= model_.mask_tokens() + 1, "ParallelSpecDrafter: gamma ", setup.gamma, " is more than the "
              "drafter's ", model_.mask_tokens(), " mask tokens + 1 can propose in one forward — use gamma <= ",
              model_.mask_tokens() + 1, " or train with a larger distill.parallel_tokens");
  setup_ = setup;
  const int64_t B = static_cast<int64_t>(setup.prompts.size());
  const int64_t P = static_cast<int64_t>(setup.prompts[0].size());
  for (const auto& prompt : setup.prompts)
    ANVIL_CHECK(static_cast<int64_t>(prompt.size()) == P && P >= 1, "ParallelSpecDrafter: the prompts of a batch "
                "must share one length >= 1");
  // Room for a short row padded after its masks (propose), within the model's positions.
  const int64_t room = std::min(setup.max_len + setup.gamma + 1, model_.config().max_position_embeddings);
  kv_ = std::make_unique<KVCache>(model_.config(), B, std::max(room, setup.max_len), model_.device(),
                                  model_.compute_dtype());
  committed_ = setup.prompts;
  fed_.assign(static_cast<size_t>(B), 0);
  if (P > 1) {  // prefill all but the last prompt token; the first proposal feeds the last
    Tensor ids = Tensor::empty({B, P - 1}, DType::I32);
    for (int64_t b = 0; b < B; ++b)
      std::copy(committed_[b].begin(), committed_[b].end() - 1, ids.data<int32_t>() + b * (P - 1));
    model_.forward_cached(ids.to(model_.device()), *kv_, /*last_position_only=*/true);
    std::fill(fed_.begin(), fed_.end(), P - 1);
  }
}

DraftBlock ParallelSpecDrafter::propose(uint32_t round, const std::vector<bool>& active) {
  ANVIL_CHECK(kv_ != nullptr, "ParallelSpecDrafter: propose() before begin()");
  const int64_t B = kv_->batch(), V = model_.config().vocab_size;
  const int gamma = setup_.gamma;
  const int64_t masks = gamma - 1, max_position = model_.config().max_position_embeddings - 1;
  const SamplingConfig& cfg = setup_.sampling;
  // Every row's call has the same width: the most pending real tokens of any active row, then
  // the masks. A row with fewer pending tokens re-feeds earlier committed ones (rolled back
  // first); a row shorter than that (early on) is padded after its masks instead, where causal
  // attention hides the padding from everything that is read.
  int64_t pending = 1;
  for (int64_t b = 0; b < B; ++b)
    if (active[b]) pending = std::max<int64_t>(pending, static_cast<int64_t>(committed_[b].size()) - fed_[b]);
  const int64_t W = pending + masks;
  Tensor ids = Tensor::empty({B, W}, DType::I32), positions = Tensor::empty({B, W}, DType::I32);
  std::vector<int64_t> last(static_cast<size_t>(B), 0);  // the column of row b's last committed token
  bool padded = false;
  for (int64_t b = 0; b < B; ++b) {
    int32_t* row = ids.data<int32_t>() + b * W;
    int32_t* pos = positions.data<int32_t>() + b * W;
    if (!active[b]) {  // a finished row rides along from slot 0 on placeholders, so it never runs out of room
      kv_->truncate(b, 0);
      std::fill(row, row + W, committed_[b].back());
      for (int64_t j = 0; j < W; ++j) pos[j] = static_cast<int32_t>(std::min(j, max_position));
      continue;
    }
    const int64_t length = static_cast<int64_t>(committed_[b].size());
    const int64_t start = std::max<int64_t>(0, length - pending), real = length - start;
    kv_->truncate(b, start);
    std::copy(committed_[b].begin() + start, committed_[b].end(), row);
    for (int64_t i = 0; i < masks; ++i) row[real + i] = model_.mask_token_id(i);
    for (int64_t j = real + masks; j < W; ++j) row[j] = committed_[b].back(), padded = true;
    for (int64_t j = 0; j < W; ++j) pos[j] = static_cast<int32_t>(std::min(start + j, max_position));
    last[b] = real - 1;
  }
  if (padded) kv_->set_positions(positions);  // the padding may run past the model's positions: clamp it
  Tensor logits = host_f32(model_.forward_cached(ids.to(model_.device()), *kv_));  // [B, W, V]
  DraftBlock block;
  block.gamma = gamma;
  block.vocab = V;
  block.forwards = 1;
  block.tokens.assign(static_cast<size_t>(B * gamma), 0);
  block.q.assign(static_cast<size_t>(B * gamma * V), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int i = 0; i < gamma; ++i) {
      int32_t tok = committed_[b].back();  // an inactive row's placeholder
      if (active[b]) {
        const float* z = logits.data<float>() + (b * W + last[b] + i) * V;
        const std::vector<double> q = sampling_distribution(z, V, cfg);
        std::copy(q.begin(), q.end(), block.q.begin() + (b * gamma + i) * V);
        if (cfg.temperature == 0) {
          tok = static_cast<int32_t>(std::max_element(q.begin(), q.end()) - q.begin());
        } else {
          const double u = speculative_uniform(cfg.seed, kDraftStream + setup_.sequences[b], round, i);
          tok = draw_token(q.data(), V, u);
        }
      }
      block.tokens[b * gamma + i] = tok;
    }
    if (!active[b]) continue;
    fed_[b] = static_cast<int64_t>(committed_[b].size());
    kv_->truncate(b, fed_[b]);  // the masks (and any padding) leave the cache: only real tokens stay
  }
  drafted_ = block.tokens;
  return block;
}

void ParallelSpecDrafter::commit(const std::vector<bool>& active, const std::vector<int>& accepted,
                                 const std::vector<int32_t>& next) {
  const int gamma = setup_.gamma;
  for (int64_t b = 0; b < kv_->batch(); ++b) {
    if (!active[b]) continue;
    const int n = accepted[b];
    ANVIL_CHECK(n >= 0 && n <= gamma, "ParallelSpecDrafter: row ", b, " accepted ", n, " of ", gamma, " draft tokens");
    // No draft token was ever fed: the accepted ones and the next token are all pending.
    committed_[b].insert(committed_[b].end(), drafted_.begin() + b * gamma, drafted_.begin() + b * gamma + n);
    committed_[b].push_back(next[b]);
  }
}

std::unique_ptr<Drafter> make_model_drafter(TransformerLM& model) {
  if (model.mask_tokens() > 0) return std::make_unique<ParallelSpecDrafter>(model);
  return std::make_unique<LMDrafter>(model);
}

}  // namespace anvil
