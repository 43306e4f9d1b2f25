// The small models the multi-rank layout tests split (tensor, pipeline, sequence parallel,
// distributed optimizers): vocabulary 132, hidden 64, 32 positions.
//   Llama  8 query / 4 KV heads (GQA; tp, sp and tp x sp up to 4 split them), MLP 96; the
//          untied variant has attention and MLP biases, so it also checks sharded and
//          once-added biases.
//   GPT-2  4 heads, MLP 128, tied, with biases and learned positions.
//   Mistral  the Llama shape with a sliding window.
#pragma once
#include <cstdint>
#include <vector>

#include "models/config.h"
#include "models/transformer.h"

namespace anvil::testing {

// The global gradient norm of a model split over tp (its own communicator) and pp, from the
// params' own grads (no reducer), the last stage's tied-embedding copy left out:
// grid_grad_norm over the model's params, as the trainer calls it without dp.
double model_grad_norm(TransformerLM& model, Communicator* pp);

ModelConfig small_llama(bool tied, int64_t layers = 2);
ModelConfig small_gpt2(int64_t layers = 2);
ModelConfig small_mistral(int64_t window, int64_t layers = 2);

// The whole-model PyTorch parity shapes: GPT-2 (vocab 523, hidden 64, 4 heads, MLP 256, 80
// positions) and Llama with GQA (vocab 611, hidden 96, 6 query / 2 KV heads, MLP 168, 128 positions).
// The tiny Llama of the speculative-decoding tests: hidden 32, 4 query / 2 KV heads,
// intermediate 64, 96 positions, `layers` layers over `vocab` tokens.
ModelConfig spec_llama(int64_t layers, int64_t vocab = 48);
ModelConfig parity_gpt2();
ModelConfig parity_llama();

struct ModelCase {
  const char* name;
  ModelConfig config;
};
// Llama untied, Llama tied and GPT-2.
std::vector<ModelCase> small_model_cases(int64_t layers = 2);

}  // namespace anvil::testing
