// EagleChainDrafter: the EAGLE drafter proposing chains from the target's states (see the header).
#include "eval/eagle_chain_drafter.h"

#include <algorithm>

#include "eval/speculative.h"

namespace anvil {

EagleChainDrafter::EagleChainDrafter(EagleDrafter& drafter) : drafter_(drafter) { taps_.layers = drafter.layers(); }

void EagleChainDrafter::append_features(const Tensor& fused, int64_t b, int64_t from, int64_t to) {
  const int64_t T = fused.size(1), h = fused.size(2);
  const float* row = fused.data<float>() + b * T * h;
  features_[b].insert(features_[b].end(), row + from * h, row + to * h);
}

void EagleChainDrafter::begin(const DraftSetup& setup) {
  ANVIL_CHECK(setup.gamma >= 1 && !setup.prompts.empty() && setup.sequences.size() == setup.prompts.size(),
              "EagleChainDrafter: a batch needs gamma >= 1 and one RNG sequence per prompt");
  const int64_t B = static_cast<int64_t>(setup.prompts.size());
  const int64_t P = static_cast<int64_t>(setup.prompts[0].size());
  for (const auto& prompt : setup.prompts)
    ANVIL_CHECK(static_cast<int64_t>(prompt.size()) == P, "EagleChainDrafter: the prompts of a batch must share "
                "one length");
  ANVIL_CHECK(P >= 2, "EAGLE drafting needs prompts of at least 2 tokens (it drafts from the target's state of a "
              "token and the token after it), got ", P, " — lengthen the prompt");
  for (const Tensor& s : taps_.states)
    ANVIL_CHECK(s.defined() && s.size(0) == B && s.size(1) == P - 1, "EagleChainDrafter: the decoder did not pass "
                "the target's states of the prompt's prefill (target_taps) before begin()");
  setup_ = setup;
  const Tensor fused = host_f32(drafter_.fuse(taps_.states));
  committed_ = setup.prompts;
  features_.assign(static_cast<size_t>(B), {});
  for (int64_t b = 0; b < B; ++b) append_features(fused, b, 0, P - 1);
  fed_.assign(static_cast<size_t>(B), 0);
  TransformerLM& body = drafter_.body();
  kv_ = std::make_unique<KVCache>(body.config(), B, setup.max_len + setup.gamma + 1, body.device(),
                                  body.compute_dtype());
}

DraftBlock EagleChainDrafter::propose(uint32_t round, const std::vector<bool>& active) {
  ANVIL_CHECK(kv_ != nullptr, "EagleChainDrafter: propose() before begin()");
  TransformerLM& body = drafter_.body();
  const int64_t B = kv_->batch(), V = body.config().vocab_size, h = body.config().hidden_size;
  const int gamma = setup_.gamma;
  const SamplingConfig& cfg = setup_.sampling;
  DraftBlock block;
  block.gamma = gamma;
  block.vocab = V;
  block.tokens.assign(static_cast<size_t>(B * gamma), 0);
  block.q.assign(static_cast<size_t>(B * gamma * V), 0.0);
  // Columns t = 0 .. L-2 have target features; each active row feeds those its cache lacks,
  // right-padded to the batch's most (the pads are dropped before the chain).
  std::vector<int64_t> columns(static_cast<size_t>(B)), count(static_cast<size_t>(B), 1);
  int64_t pending = 1;
  for (int64_t b = 0; b < B; ++b) {
    columns[b] = static_cast<int64_t>(committed_[b].size()) - 1;
    if (active[b]) pending = std::max(pending, count[b] = columns[b] - fed_[b]);
  }
  Tensor tokens = Tensor::zeros({B, pending}, DType::I32);
  Tensor features = Tensor::zeros({B, pending, h});
  for (int64_t b = 0; b < B; ++b) {
    int32_t* tok = tokens.data<int32_t>() + b * pending;
    std::fill(tok, tok + pending, committed_[b].back());
    if (!active[b]) {  // a finished row rides along from slot 0 on placeholders
      kv_->truncate(b, 0);
      continue;
    }
    kv_->truncate(b, fed_[b]);
    for (int64_t i = 0; i < count[b]; ++i) {
      const int64_t t = fed_[b] + i;
      tok[i] = committed_[b][t + 1];
      std::copy(features_[b].begin() + t * h, features_[b].begin() + (t + 1) * h,
                features.data<float>() + (b * pending + i) * h);
    }
  }
  const Device device = body.device();
  Tensor out = drafter_.forward_cached(tokens.to(device), features.to(body.compute_dtype()).to(device), *kv_);
  block.forwards = 1;
  // Each row's last real column drafts x_1; its pads leave the cache.
  Tensor hidden = Tensor::empty({B, 1, h}, out.dtype(), out.device());
  for (int64_t b = 0; b < B; ++b) {
    const int64_t last = active[b] ? count[b] - 1 : 0;
    hidden.slice(0, b, b + 1).copy_(out.slice(0, b, b + 1).slice(1, last, last + 1));
    if (active[b]) {
      fed_[b] = columns[b];
      kv_->truncate(b, columns[b]);
    } else {
      kv_->truncate(b, 1);
    }
  }
  Tensor step_tokens = Tensor::empty({B, 1}, DType::I32);
  for (int i = 0; i < gamma; ++i) {
    const Tensor logits = host_f32(drafter_.logits(hidden));
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
      step_tokens.data<int32_t>()[b] = tok;
    }
    if (i + 1 == gamma) break;  // the last draft is never fed: the verifier may reject it
    // The chain: the drafter's own output is the next step's feature (training-time test's step i + 1).
    hidden = drafter_.forward_cached(step_tokens.to(device), hidden, *kv_);
    ++block.forwards;
  }
  drafted_ = block.tokens;
  return block;
}

void EagleChainDrafter::commit(const std::vector<bool>& active, const std::vector<int>& accepted,
                               const std::vector<int32_t>& next) {
  const int64_t B = kv_->batch();
  const int gamma = setup_.gamma;
  for (const Tensor& s : taps_.states)
    ANVIL_CHECK(s.defined() && s.size(0) == B && s.size(1) == gamma + 1, "EagleChainDrafter: the decoder did not "
                "pass the target's states of the verification (target_taps) before commit()");
  const Tensor fused = host_f32(drafter_.fuse(taps_.states));  // positions L-1 .. L-1+gamma of each row
  for (int64_t b = 0; b < B; ++b) {
    if (!active[b]) continue;
    const int n = accepted[b];
    ANVIL_CHECK(n >= 0 && n <= gamma, "EagleChainDrafter: row ", b, " accepted ", n, " of ", gamma, " draft tokens");
    // The target confirmed the last committed token and the n accepted drafts: n + 1 new columns.
    append_features(fused, b, 0, n + 1);
    committed_[b].insert(committed_[b].end(), drafted_.begin() + b * gamma, drafted_.begin() + b * gamma + n);
    committed_[b].push_back(next[b]);
    kv_->truncate(b, fed_[b]);  // the chain's entries were built from the drafter's own features
  }
}

}  // namespace anvil
