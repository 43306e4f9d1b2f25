// LMDrafter: a standalone TransformerLM proposing draft tokens (see eval/drafter.h).
#include <algorithm>

#include "eval/drafter.h"
#include "eval/speculative.h"

namespace anvil {

void LMDrafter::begin(const DraftSetup& setup) {
  ANVIL_CHECK(setup.gamma >= 1 && !setup.prompts.empty() && setup.sequences.size() == setup.prompts.size(),
              "LMDrafter: a batch needs gamma >= 1 and one RNG sequence per prompt");
  setup_ = setup;
  const int64_t B = static_cast<int64_t>(setup.prompts.size());
  const int64_t P = static_cast<int64_t>(setup.prompts[0].size());
  for (const auto& prompt : setup.prompts)
    ANVIL_CHECK(static_cast<int64_t>(prompt.size()) == P && P >= 1, "LMDrafter: the prompts of a batch must share "
                "one length >= 1");
  kv_ = std::make_unique<KVCache>(model_.config(), B, setup.max_len, model_.device(), model_.compute_dtype());
  committed_ = setup.prompts;
  fed_.assign(static_cast<size_t>(B), 0);
  // Prefill all but the last prompt token; the first proposal feeds the last.
  if (P > 1) {
    Tensor ids = Tensor::empty({B, P - 1}, DType::I32);
    for (int64_t b = 0; b < B; ++b)
      std::copy(committed_[b].begin(), committed_[b].end() - 1, ids.data<int32_t>() + b * (P - 1));
    model_.forward_cached(ids.to(model_.device()), *kv_, /*last_position_only=*/true);
    std::fill(fed_.begin(), fed_.end(), P - 1);
  }
}

DraftBlock LMDrafter::propose(uint32_t round, const std::vector<bool>& active) {
  ANVIL_CHECK(kv_ != nullptr, "LMDrafter: propose() before begin()");
  const int64_t B = kv_->batch(), V = model_.config().vocab_size;
  const int gamma = setup_.gamma;
  const SamplingConfig& cfg = setup_.sampling;
  DraftBlock block;
  block.gamma = gamma;
  block.vocab = V;
  block.tokens.assign(static_cast<size_t>(B * gamma), 0);
  block.q.assign(static_cast<size_t>(B * gamma * V), 0.0);
  // Every row feeds the same number of pending tokens: the most any active row has.
  int64_t pending = 1;
  for (int64_t b = 0; b < B; ++b)
    if (active[b]) pending = std::max<int64_t>(pending, static_cast<int64_t>(committed_[b].size()) - fed_[b]);
  Tensor ids = Tensor::empty({B, pending}, DType::I32);
  for (int64_t b = 0; b < B; ++b) {
    int32_t* row = ids.data<int32_t>() + b * pending;
    if (!active[b]) {  // a finished row rides along from slot 0 on placeholders, so it never runs out of room
      kv_->truncate(b, 0);
      std::fill(row, row + pending, committed_[b].back());
      continue;
    }
    const int64_t length = static_cast<int64_t>(committed_[b].size());
    kv_->truncate(b, length - pending);  // a row with fewer pending tokens re-feeds its latest committed ones
    std::copy(committed_[b].end() - pending, committed_[b].end(), row);
    fed_[b] = length;
  }
  Tensor logits = host_f32(model_.forward_cached(ids.to(model_.device()), *kv_, /*last_position_only=*/true));
  block.forwards = 1;
  Tensor step_ids = Tensor::empty({B, 1}, DType::I32);
  for (int i = 0; i < gamma; ++i) {
    for (int64_t b = 0; b < B; ++b) {
      int32_t tok = committed_[b].back();  // an inactive row's placeholder
      if (active[b]) {
        const std::vector<double> q = sampling_distribution(logits.data<float>() + b * V, V, cfg);
        std::copy(q.begin(), q.end(), block.q.begin() + (b * gamma + i) * V);
        if (cfg.temperature == 0) {
          tok = static_cast<int32_t>(std::max_element(q.begin(), q.end()) - q.begin());
        } else {
          const double u = speculative_uniform(cfg.seed, kDraftStream + setup_.sequences[b], round, i);
          tok = draw_token(q.data(), V, u);
        }
      }
      block.tokens[b * gamma + i] = tok;
      step_ids.data<int32_t>()[b] = tok;
    }
    if (i + 1 == gamma) break;  // the last draft is never fed: the verifier may reject it
    logits = host_f32(model_.forward_cached(step_ids.to(model_.device()), *kv_));
    ++block.forwards;
  }
  drafted_ = block.tokens;
  return block;
}

void LMDrafter::commit(const std::vector<bool>& active, const std::vector<int>& accepted,
                       const std::vector<int32_t>& next) {
  const int64_t B = kv_->batch();
  const int gamma = setup_.gamma;
  for (int64_t b = 0; b < B; ++b) {
    if (!active[b]) continue;  // nothing committed; propose() restarts it from slot 0
    const int64_t length = static_cast<int64_t>(committed_[b].size());
    const int n = accepted[b];
    ANVIL_CHECK(n >= 0 && n <= gamma, "LMDrafter: row ", b, " accepted ", n, " of ", gamma, " draft tokens");
    // The cache holds the committed tokens and drafts 1..gamma-1 (the last was never fed).
    fed_[b] = length + std::min(n, gamma - 1);
    kv_->truncate(b, fed_[b]);
    committed_[b].insert(committed_[b].end(), drafted_.begin() + b * gamma, drafted_.begin() + b * gamma + n);
    committed_[b].push_back(next[b]);
  }
}

}  // namespace anvil
