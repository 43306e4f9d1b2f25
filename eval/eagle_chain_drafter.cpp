// EagleChainDrafter: the EAGLE drafter proposing chains from the target's states (see the header).
#include "eval/eagle_chain_drafter.h"

#include <algorithm>


namespace anvil {

EagleChainDrafter::EagleChainDrafter(EagleDrafter& drafter) : drafter_(drafter) { taps_.layers = drafter.layers(); }

void EagleChainDrafter::append_features(const Tensor& fused, int64_t b, int64_t from, int64_t to) {
  const int64_t T = fused.size(1), h = fused.size(2);
  const float* row = fused.data<float>() + b * T * h;
  features_[b].insert(features_[b].end(), row + from * h, row + to * h);
}

void EagleChainDrafter::begin(const DraftSetup& setup) {
  const int64_t P = check_draft_setup(setup, "EagleChainDrafter");
  const int64_t B = static_cast<int64_t>(setup.prompts.size());
  ANVIL_CHECK(P >= 2, "EAGLE drafting needs prompts of at least 2 tokens (it drafts from the target's state of a "
              "token and the token after it), got ", P, " — lengthen the prompt");
  for (const Tensor& s : taps_.states)
    ANVIL_CHECK(s.defined() && s.size(0) == B && s.size(1) == P - 1, "EagleChainDrafter: the decoder did not pass "
                "the target's states of the prompt's prefill (target_taps) before begin()");
  rows_.begin(setup);
  const Tensor fused = host_f32(drafter_.fuse(taps_.states));
  features_.assign(static_cast<size_t>(B), {});
  for (int64_t b = 0; b < B; ++b) append_features(fused, b, 0, P - 1);
  TransformerLM& body = drafter_.body();
  kv_ = std::make_unique<KVCache>(body.config(), B, setup.max_len + setup.gamma + 1, body.device(),
                                  body.compute_dtype());
}

DraftBlock EagleChainDrafter::propose(uint32_t round, const std::vector<bool>& active) {
  ANVIL_CHECK(kv_ != nullptr, "EagleChainDrafter: propose() before begin()");
  TransformerLM& body = drafter_.body();
  const int64_t B = kv_->batch(), V = body.config().vocab_size, h = body.config().hidden_size;
  const int gamma = rows_.setup.gamma;
  DraftBlock block = rows_.empty_block(V);
  const std::vector<std::vector<int32_t>>& committed = rows_.committed;
  std::vector<int64_t>& fed = rows_.fed;
  // Columns t = 0 .. L-2 have target features; each active row feeds those its cache lacks,
  // right-padded to the batch's most (the pads are dropped before the chain).
  std::vector<int64_t> columns(static_cast<size_t>(B)), count(static_cast<size_t>(B), 1);
  int64_t pending = 1;
  for (int64_t b = 0; b < B; ++b) {
    columns[b] = static_cast<int64_t>(committed[b].size()) - 1;
    if (active[b]) pending = std::max(pending, count[b] = columns[b] - fed[b]);
  }
  Tensor tokens = Tensor::zeros({B, pending}, DType::I32);
  Tensor features = Tensor::zeros({B, pending, h});
  for (int64_t b = 0; b < B; ++b) {
    int32_t* tok = tokens.data<int32_t>() + b * pending;
    std::fill(tok, tok + pending, committed[b].back());
    if (!active[b]) {  // a finished row rides along from slot 0 on placeholders
      kv_->truncate(b, 0);
      continue;
    }
    kv_->truncate(b, fed[b]);
    for (int64_t i = 0; i < count[b]; ++i) {
      const int64_t t = fed[b] + i;
      tok[i] = committed[b][t + 1];
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
      fed[b] = columns[b];
      kv_->truncate(b, columns[b]);
    } else {
      kv_->truncate(b, 1);
    }
  }
  Tensor step_tokens = Tensor::empty({B, 1}, DType::I32);
  for (int i = 0; i < gamma; ++i) {
    const Tensor logits = host_f32(drafter_.logits(hidden));
    for (int64_t b = 0; b < B; ++b)
      step_tokens.data<int32_t>()[b] = rows_.draft(block, b, i, logits.data<float>() + b * V, active[b], round);
    if (i + 1 == gamma) break;  // the last draft is never fed: the verifier may reject it
    // The chain: the drafter's own output is the next step's feature (training-time test's step i + 1).
    hidden = drafter_.forward_cached(step_tokens.to(device), hidden, *kv_);
    ++block.forwards;
  }
  rows_.drafted = block.tokens;
  return block;
}

void EagleChainDrafter::commit(const std::vector<bool>& active, const std::vector<int>& accepted,
                               const std::vector<int32_t>& next) {
  const int64_t B = kv_->batch();
  const int gamma = rows_.setup.gamma;
  for (const Tensor& s : taps_.states)
    ANVIL_CHECK(s.defined() && s.size(0) == B && s.size(1) == gamma + 1, "EagleChainDrafter: the decoder did not "
                "pass the target's states of the verification (target_taps) before commit()");
  const Tensor fused = host_f32(drafter_.fuse(taps_.states));  // positions L-1 .. L-1+gamma of each row
  for (int64_t b = 0; b < B; ++b) {
    if (!active[b]) continue;
    rows_.commit(b, accepted[b], next[b], "EagleChainDrafter");
    // The target confirmed the last committed token and the accepted drafts: accepted + 1 new columns.
    append_features(fused, b, 0, accepted[b] + 1);
    kv_->truncate(b, rows_.fed[b]);  // the chain's entries were built from the drafter's own features
  }
}

}  // namespace anvil
