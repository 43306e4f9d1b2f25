// What the drafters share (see eval/drafter.h): the draw of a draft token, the batch checks and
// the per-row committed / fed / drafted state.
#include "eval/drafter.h"

#include <algorithm>

#include "eval/speculative.h"

namespace anvil {

int32_t draw_draft_token(const std::vector<double>& q, const SamplingConfig& sampling, uint32_t sequence,
                         uint32_t round, int position) {
  if (sampling.temperature == 0) return static_cast<int32_t>(std::max_element(q.begin(), q.end()) - q.begin());
  const double u = speculative_uniform(sampling.seed, kDraftStream + sequence, round, position);
  return draw_token(q.data(), static_cast<int64_t>(q.size()), u);
}

int64_t check_draft_setup(const DraftSetup& setup, const char* who) {
  ANVIL_CHECK(setup.gamma >= 1 && !setup.prompts.empty() && setup.sequences.size() == setup.prompts.size(),
              who, ": a batch needs gamma >= 1 and one RNG sequence per prompt");
  const int64_t P = static_cast<int64_t>(setup.prompts[0].size());
  for (const auto& prompt : setup.prompts)
    ANVIL_CHECK(static_cast<int64_t>(prompt.size()) == P && P >= 1, who, ": the prompts of a batch must share "
                "one length >= 1");
  return P;
}

void DraftRows::begin(const DraftSetup& batch) {
  setup = batch;
  committed = batch.prompts;
  fed.assign(batch.prompts.size(), 0);
  drafted.clear();
}

DraftBlock DraftRows::empty_block(int64_t vocab) const {
  DraftBlock block;
  block.gamma = setup.gamma;
  block.vocab = vocab;
  block.tokens.assign(static_cast<size_t>(batch() * setup.gamma), 0);
  block.q.assign(static_cast<size_t>(batch() * setup.gamma * vocab), 0.0);
  return block;
}

int32_t DraftRows::draft(DraftBlock& block, int64_t b, int i, const float* z, bool active, uint32_t round) const {
  int32_t tok = committed[b].back();  // an inactive row's placeholder
  if (active) {
    const std::vector<double> q = sampling_distribution(z, block.vocab, setup.sampling);
    std::copy(q.begin(), q.end(), block.q.begin() + (b * block.gamma + i) * block.vocab);
    tok = draw_draft_token(q, setup.sampling, setup.sequences[b], round, i);
  }
  block.tokens[b * block.gamma + i] = tok;
  return tok;
}

void DraftRows::commit(int64_t b, int n, int32_t next, const char* who) {
  const int gamma = setup.gamma;
  ANVIL_CHECK(n >= 0 && n <= gamma, who, ": row ", b, " accepted ", n, " of ", gamma, " draft tokens");
  committed[b].insert(committed[b].end(), drafted.begin() + b * gamma, drafted.begin() + b * gamma + n);
  committed[b].push_back(next);
}

void prefill_prompts(TransformerLM& model, KVCache& kv, DraftRows& rows) {
  const int64_t B = rows.batch(), P = static_cast<int64_t>(rows.committed[0].size());
  if (P <= 1) return;
  Tensor ids = Tensor::empty({B, P - 1}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    std::copy(rows.committed[b].begin(), rows.committed[b].end() - 1, ids.data<int32_t>() + b * (P - 1));
  model.forward_cached(ids.to(model.device()), kv, /*last_position_only=*/true);
  std::fill(rows.fed.begin(), rows.fed.end(), P - 1);
}

}  // namespace anvil
