#include "tests/support/small_models.h"

#include "parallel/grad_norm.h"

namespace anvil::testing {

namespace {
void small_shape(ModelConfig& c, int64_t layers) {
  c.vocab_size = 132;
  c.hidden_size = 64;
  c.num_hidden_layers = layers;
  c.max_position_embeddings = 32;
}
// Llama-family attention and MLP: 8 query / 4 KV heads, MLP 96.
void small_gqa(ModelConfig& c) {
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.intermediate_size = 96;
}
}  // namespace

ModelConfig small_llama(bool tied, int64_t layers) {
  ModelConfig c = ModelConfig::llama();
  small_shape(c, layers);
  small_gqa(c);
  c.tie_word_embeddings = tied;
  c.attention_bias = c.mlp_bias = !tied;
  return c;
}

ModelConfig small_gpt2(int64_t layers) {
  ModelConfig c = ModelConfig::gpt2();
  small_shape(c, layers);
  c.num_attention_heads = c.num_key_value_heads = 4;
  c.intermediate_size = 128;
  return c;
}

ModelConfig small_mistral(int64_t window, int64_t layers) {
  ModelConfig c = ModelConfig::mistral();
  small_shape(c, layers);
  small_gqa(c);
  c.sliding_window = window;
  return c;
}

std::vector<ModelCase> small_model_cases(int64_t layers) {
  return {{"llama_gqa_untied", small_llama(false, layers)},
          {"llama_gqa_tied", small_llama(true, layers)},
          {"gpt2", small_gpt2(layers)}};
}

double model_grad_norm(TransformerLM& model, Communicator* pp) {
  const std::vector<Param*> params = model.params();
  std::vector<const Param*> not_counted;
  if (const Param* copy = model.tied_embedding_copy()) not_counted.push_back(copy);
  return grid_grad_norm({{&params, nullptr, nullptr}}, {model.tensor_parallel(), pp}, not_counted);
}

ModelConfig spec_llama(int64_t layers, int64_t vocab) {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = vocab;
  c.hidden_size = 32;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 64;
  c.max_position_embeddings = 96;
  c.norm_eps = 1e-5;
  return c;
}

ModelConfig parity_gpt2() {
  ModelConfig c = ModelConfig::gpt2();
  c.vocab_size = 523;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = c.num_key_value_heads = 4;
  c.intermediate_size = 256;
  c.max_position_embeddings = 80;
  return c;
}

ModelConfig parity_llama() {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 611;
  c.hidden_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.intermediate_size = 168;
  c.max_position_embeddings = 128;
  c.rope_theta = 10000.0;
  c.norm_eps = 1e-5;
  return c;
}

}  // namespace anvil::testing
