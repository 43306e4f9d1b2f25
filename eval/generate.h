// Autoregressive generation with a KV cache (TransformerLM::forward_cached):
// greedy decoding and sampling with temperature, top-k and top-p (nucleus).
//
// The sampling rule follows Hugging Face's logits warpers, in their order:
//   1. temperature: z = logits / temperature (temperature 0 = greedy argmax,
//      ties to the lowest id, as torch.argmax);
//   2. top-k: keep every token whose scaled logit is >= the k-th largest (tokens
//      tied with the k-th are all kept, as TopKLogitsWarper does);
//   3. top-p: softmax over the kept tokens, order them by probability (ties: the
//      lower id first) and keep the shortest prefix whose cumulative probability
//      is >= top_p, i.e. every token whose preceding mass is < top_p (at least one);
//   4. draw from the softmax renormalised over what is left.
// Draws are reproducible: token t of prompt i uses one uniform from
// PhiloxStream(seed, kSampleStream + i, t), so a prompt's completion does not
// depend on which other prompts share its batch.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/token_store.h"
#include "data/tokenizer.h"
#include "models/transformer.h"

namespace anvil {

struct SamplingConfig {
  double temperature = 1.0;  // 0: greedy (top_k, top_p and seed are then unused)
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off; must lie in (0, 1]
  uint64_t seed = 0;

  static SamplingConfig greedy() { return SamplingConfig{0.0, 0, 1.0, 0}; }
  void validate() const;  // throws naming the bad field
};

// The Philox stream of prompt i is kSampleStream + i.
constexpr uint32_t kSampleStream = 0x5a3d1e00u;

// The uniform in [0, 1) (53 random bits) used for token `step` of prompt `sequence`.
double sampling_uniform(uint64_t seed, uint32_t sequence, uint32_t step);

// The final distribution the sampler draws from, for one row of logits (size
// vocab): zero outside the kept set, summing to 1. With temperature 0 it is one-hot
// on the argmax. Exposed so tests can check the selection rule.
std::vector<double> sampling_distribution(const float* logits, int64_t vocab, const SamplingConfig& config);

// The token drawn for uniform u in [0, 1) by inverse CDF over the kept tokens in
// ascending id order (greedy ignores u).
int32_t sample_token(const float* logits, int64_t vocab, const SamplingConfig& config, double u);

// Generates up to max_new_tokens tokens after each prompt and returns only the
// new tokens, one vector per prompt, in prompt order. A sequence that emits
// stop_token ends there (the stop token is included as its last token); the loop
// ends when every sequence has stopped. Prompts of equal length are decoded as one
// batch; prompts of different lengths are grouped by length (one batch per
// length, no padding), which gives the same tokens as decoding each alone.
// Every prompt needs length + max_new_tokens <= max_position_embeddings.
// Prompt i draws from the sampling stream of sequence first_index + i, so a long list decoded
// in slices (first_index = the slice's start) gives the same tokens as one call over all of it.
std::vector<std::vector<int32_t>> generate(TransformerLM& model, const std::vector<std::vector<int32_t>>& prompts,
                                          int max_new_tokens, const SamplingConfig& config,
                                          std::optional<int32_t> stop_token = std::nullopt,
                                          uint32_t first_index = 0);

// The prompt followed by the text of up to `tokens` generated tokens (fewer when the model's
// positions run out), stopping at `eos` when given (>= 0). An empty prompt starts a new
// document: it begins with eos (or token 0 without one).
std::string complete_text(TransformerLM& model, const Tokenizer& tokenizer, const std::string& prompt, int64_t tokens,
                          const SamplingConfig& config, int32_t eos);
// The end-of-document token of a run: the store's, or without data the tokenizer's <|endoftext|>; -1 if none.
int32_t end_of_document_id(const TokenStore* store, const Tokenizer& tokenizer);

}  // namespace anvil
