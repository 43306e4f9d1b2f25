// Early-exit self-speculative decoding with a shared KV cache (see the header).
#include "eval/self_speculative.h"

#include <algorithm>

namespace anvil {

void check_self_speculation(const TransformerLM& model, int64_t exit_layer, int gamma, const char* who) {
  const int64_t L = model.config().num_hidden_layers;
  ANVIL_CHECK(L >= 2, who, ": the model has ", L, " layer — early-exit self-speculation drafts with the first E < L "
              "layers, so it needs a model of 2 or more layers");
  ANVIL_CHECK(exit_layer >= 1 && exit_layer <= L - 1, who, ": exit layer ", exit_layer, " is outside [1, ", L - 1,
              "] — the drafter runs the model's first E layers (of ", L, "), at least 1 and fewer than all; e.g. --exit-layer ",
              std::max<int64_t>(1, L / 4));
  ANVIL_CHECK(gamma >= 1, who, ": gamma ", gamma, " — the draft tokens per verification must be >= 1, e.g. --gamma 4");
}

SelfSpeculativeBatch::SelfSpeculativeBatch(TransformerLM& model, int64_t exit_layer, int gamma,
                                           const SamplingConfig& sampling,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const std::vector<uint32_t>& sequences, int64_t max_len,
                                           SpeculativeStats& stats)
    : model_(model),
      exit_layer_(exit_layer),
      gamma_(gamma),
      kv_(model.config(), static_cast<int64_t>(prompts.size()), max_len, model.device(), model.compute_dtype()),
      stats_(stats) {
  check_self_speculation(model, exit_layer, gamma, "self-speculative decoding");
  DraftSetup setup;
  setup.prompts = prompts;
  setup.sequences = sequences;
  setup.gamma = gamma;
  setup.max_len = max_len;
  setup.sampling = sampling;
  const int64_t P = check_draft_setup(setup, "self-speculative decoding");
  rows_.begin(setup);
  // The cache holds every committed token but the last (the first round's first draft input).
  const int64_t B = rows_.batch();
  if (P > 1) {
    Tensor ids = Tensor::empty({B, P - 1}, DType::I32);
    for (int64_t b = 0; b < B; ++b) std::copy(prompts[b].begin(), prompts[b].end() - 1, ids.data<int32_t>() + b * (P - 1));
    model_.forward_cached_hidden(ids.to(model_.device()), kv_);
  }
}

std::vector<std::vector<int32_t>> SelfSpeculativeBatch::step(uint32_t round, const std::vector<bool>& active) {
  const int64_t B = rows_.batch(), V = model_.config().vocab_size, W = gamma_ + 1;
  const SamplingConfig& cfg = rows_.setup.sampling;
  const bool greedy = cfg.temperature == 0;
  ANVIL_CHECK(static_cast<int64_t>(active.size()) == B, "self-speculative decoding: ", active.size(),
              " activity flags for ", B, " rows");
  // Slots the cache keeps before this round: every committed token but the last; a finished row
  // restarts at slot 0 each round so it never runs out of room.
  std::vector<int64_t> kept(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    kept[b] = active[b] ? static_cast<int64_t>(rows_.committed[b].size()) - 1 : 0;
    kv_.truncate(b, kept[b]);
  }

  // Draft: γ + 1 early-exit forwards of one token; each keeps its layer E-1 output for the
  // verification and (all but the last) drafts the next token from the early exit's head.
  DecodeClock::time_point t0 = DecodeClock::now();
  DraftBlock block = rows_.empty_block(V);
  Tensor exit_states = Tensor::empty({B, W, model_.config().hidden_size}, model_.compute_dtype(), model_.device());
  HiddenTaps taps;
  taps.layers = {exit_layer_ - 1};
  Tensor ids = Tensor::empty({B, 1}, DType::I32);
  for (int64_t b = 0; b < B; ++b) ids.data<int32_t>()[b] = rows_.committed[b].back();
  for (int i = 0; i <= gamma_; ++i) {
    const Tensor normed = model_.forward_cached_hidden(ids.to(model_.device()), kv_, &taps, exit_layer_);
    exit_states.slice(1, i, i + 1).copy_(taps.states[0]);
    ++stats_.drafter_calls;
    if (i == gamma_) break;  // d_γ only needed its first E layers
    const Tensor logits = host_f32(model_.infer_head(normed));  // [B, 1, V]
    for (int64_t b = 0; b < B; ++b)
      ids.data<int32_t>()[b] = rows_.draft(block, b, i, logits.data<float>() + b * V, active[b], round);
  }
  stats_.draft_seconds += seconds_since(t0);

  // Verify: back to the kept slots, then layers E .. L-1 on the exit states of c, d_1 .. d_γ.
  t0 = DecodeClock::now();
  for (int64_t b = 0; b < B; ++b) kv_.truncate(b, kept[b]);
  const Tensor top = model_.forward_blocks_cached(exit_states, kv_, exit_layer_);
  const Tensor logits = host_f32(model_.infer_head(model_.final_norm().infer(top)));  // [B, W, V]
  stats_.target_seconds += seconds_since(t0);
  ++stats_.target_calls;

  t0 = DecodeClock::now();
  std::vector<std::vector<int32_t>> committed(static_cast<size_t>(B));
  std::vector<double> p, uniforms;
  for (int64_t b = 0; b < B; ++b) {
    if (!active[b]) continue;
    ++stats_.target_row_forwards;
    verification_inputs(logits.data<float>(), b, W, V, cfg, rows_.setup.sequences[b], round, greedy, p, uniforms);
    ChainRow chain;
    chain.gamma = gamma_;
    chain.vocab = V;
    chain.draft = block.tokens.data() + b * gamma_;
    chain.q = block.q.data() + b * gamma_ * V;
    chain.p = p.data();
    const ChainVerdict verdict = verify_chain(chain, uniforms.data(), greedy);
    for (int i = 0; i < gamma_ && i <= verdict.accepted; ++i) {
      ++stats_.reached[i];
      if (i < verdict.accepted) ++stats_.accepted[i];
    }
    stats_.committed += verdict.accepted + 1;
    // Keep c and the accepted drafts (all layers filled); the next token is the next round's c.
    kv_.truncate(b, kept[b] + 1 + verdict.accepted);
    std::vector<int32_t>& mine = committed[b];
    mine.assign(chain.draft, chain.draft + verdict.accepted);
    mine.push_back(verdict.next);
    rows_.committed[b].insert(rows_.committed[b].end(), mine.begin(), mine.end());
  }
  stats_.verify_seconds += seconds_since(t0);
  return committed;
}

SpeculativeResult self_speculative_generate(TransformerLM& model, int64_t exit_layer,
                                            const std::vector<std::vector<int32_t>>& prompts, int max_new_tokens,
                                            const SamplingConfig& config, int gamma,
                                            std::optional<int32_t> stop_token) {
  check_self_speculation(model, exit_layer, gamma, "self-speculative decoding");
  const ModelConfig& mc = model.config();
  check_speculative_call(mc, mc.vocab_size, mc.max_position_embeddings, prompts, max_new_tokens, config, gamma,
                         stop_token);
  SpeculativeResult result = empty_speculative_result(prompts.size(), gamma);
  SpeculativeStats& stats = result.stats;
  if (max_new_tokens == 0) return result;
  const DecodeClock::time_point start = DecodeClock::now();
  for (const auto& [length, which] : prompts_by_length(prompts)) {
    const DecodeClock::time_point t0 = DecodeClock::now();
    std::vector<std::vector<int32_t>> batch_prompts;
    std::vector<uint32_t> sequences;
    for (size_t i : which) {
      batch_prompts.push_back(prompts[i]);
      sequences.push_back(static_cast<uint32_t>(i));
    }
    // A row verifies with <= P + max_new_tokens - 1 committed tokens and drafts γ + 1 slots past
    // all but the last of them.
    const int64_t max_len = static_cast<int64_t>(length) + max_new_tokens + gamma - 1;
    SelfSpeculativeBatch batch(model, exit_layer, gamma, config, batch_prompts, sequences, max_len, stats);
    stats.prefill_seconds += seconds_since(t0);
    std::vector<bool> active(which.size(), true);
    for (uint32_t round = 0;; ++round) {
      const std::vector<std::vector<int32_t>> committed = batch.step(round, active);
      for (size_t b = 0; b < which.size(); ++b) {
        if (!active[b]) continue;
        std::vector<int32_t> seq;  // commit_tokens' copy of the sequence; the batch keeps its own
        stats.tokens += commit_tokens(committed[b], max_new_tokens, stop_token, seq, result.tokens[which[b]]);
      }
      if (!still_active(active, result.tokens, which, max_new_tokens, stop_token)) break;
    }
  }
  stats.total_seconds = seconds_since(start);
  return result;
}

std::string self_speculative_complete_text(TransformerLM& model, int64_t exit_layer, const Tokenizer& tokenizer,
                                           const std::string& prompt, int64_t tokens, const SamplingConfig& config,
                                           int gamma, int32_t eos, SpeculativeStats* stats) {
  check_self_speculation(model, exit_layer, gamma, "generate --early-exit");
  std::vector<int32_t> ids = tokenizer.encode(prompt);
  if (ids.empty()) ids.push_back(eos >= 0 ? eos : 0);  // an empty prompt starts a new document
  const int64_t room = model.config().max_position_embeddings - static_cast<int64_t>(ids.size()) - (gamma - 1);
  const SpeculativeResult r = self_speculative_generate(
      model, exit_layer, {ids}, static_cast<int>(std::max<int64_t>(0, std::min(tokens, room))), config, gamma,
      eos >= 0 ? std::optional<int32_t>(eos) : std::nullopt);
  if (stats) *stats = r.stats;
  return prompt + tokenizer.decode(r.tokens[0]);
}

}  // namespace anvil
