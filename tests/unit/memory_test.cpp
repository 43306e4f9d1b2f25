// The measured peak of a forward+backward step against the size tables.
#include <gtest/gtest.h>

#include "models/transformer.h"
#include "tests/support/reference.h"

using namespace anvil;

namespace {
void check_peak(const ModelConfig& c, int64_t B, int64_t T) {
  TransformerLM model(c);
  model.init_weights(1);
  Tensor ids = anvil::testing::random_ids({B, T}, static_cast<int32_t>(c.vocab_size), 1);
  Tensor targets = anvil::testing::random_ids({B, T}, static_cast<int32_t>(c.vocab_size), 2);
  const MemoryTable table = model.memory_table(B, T);
  Allocator& alloc = cpu_allocator();
  const size_t inputs = ids.nbytes() + targets.nbytes();
  const size_t resident = alloc.stats().current_bytes - inputs;
  alloc.reset_peak();
  {
    Cache cache;
    model.forward_loss(ids, targets, cache);
    model.backward_loss(cache);
    EXPECT_EQ(cache.bytes(), 0u) << "backward left activations in the cache";
  }
  const size_t peak = alloc.stats().peak_bytes - inputs;
  const double predicted = static_cast<double>(table.total());
  std::printf("%s B=%ld T=%ld: params %.2f MB, grads %.2f MB, activations %.2f MB, workspace %.2f MB; "
              "predicted peak %.2f MB, measured %.2f MB (resident before the step %.2f MB)\n",
              c.model_type.c_str(), long(B), long(T), table.param_bytes / 1e6, table.grad_bytes / 1e6,
              table.activation_bytes / 1e6, table.workspace_bytes / 1e6, predicted / 1e6, peak / 1e6, resident / 1e6);
  EXPECT_EQ(resident, table.param_bytes + table.grad_bytes + table.buffer_bytes);
  EXPECT_NEAR(static_cast<double>(peak), predicted, 0.10 * predicted);
  // The step's own allocations (activations + workspace) alone, too.
  const double step_predicted = static_cast<double>(table.activation_bytes + table.workspace_bytes);
  EXPECT_NEAR(static_cast<double>(peak - resident), step_predicted, 0.10 * step_predicted);
}
}  // namespace

TEST(Memory, LlamaPeakMatchesSizeTables) {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 512; c.hidden_size = 128; c.num_hidden_layers = 3; c.num_attention_heads = 4;
  c.num_key_value_heads = 2; c.intermediate_size = 344; c.max_position_embeddings = 256;
  check_peak(c, 4, 128);
}

TEST(Memory, Gpt2PeakMatchesSizeTables) {
  ModelConfig c = ModelConfig::gpt2();
  c.vocab_size = 512; c.hidden_size = 128; c.num_hidden_layers = 3; c.num_attention_heads = 4;
  c.num_key_value_heads = 4; c.intermediate_size = 512; c.max_position_embeddings = 256;
  check_peak(c, 4, 128);
}

TEST(Memory, FrozenParamsDropTheirGradientBytes) {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 256; c.hidden_size = 64; c.num_hidden_layers = 2; c.num_attention_heads = 4;
  c.num_key_value_heads = 4; c.intermediate_size = 128;
  TransformerLM model(c);
  const size_t all = model.memory_table(1, 8).grad_bytes;
  size_t frozen = 0;
  for (Param* p : model.params())
    if (p->name.find(".mlp.") != std::string::npos) { frozen += p->value.nbytes(); p->set_trainable(false); }
  EXPECT_GT(frozen, 0u);
  EXPECT_EQ(model.memory_table(1, 8).grad_bytes, all - frozen);
}

// A model built under FrozenParamScope never allocates a gradient; scopes nest, and params built
// after the last one closes start trainable again.
TEST(Memory, FrozenParamScopeBuildsParamsWithoutGradients) {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 256; c.hidden_size = 64; c.num_hidden_layers = 2; c.num_attention_heads = 4;
  c.num_key_value_heads = 4; c.intermediate_size = 128;
  Allocator& alloc = cpu_allocator();
  const size_t before = alloc.stats().current_bytes;
  alloc.reset_peak();
  {
    FrozenParamScope outer;
    {
      FrozenParamScope inner;
    }
    TransformerLM frozen(c);  // still frozen: the outer scope is alive
    const MemoryTable t = frozen.memory_table(1, 8);
    EXPECT_EQ(t.grad_bytes, 0u);
    for (Param* p : frozen.params()) EXPECT_FALSE(p->trainable || p->grad.defined()) << p->name;
    EXPECT_EQ(alloc.stats().peak_bytes - before, t.param_bytes + t.buffer_bytes);
  }
  TransformerLM trainable(c);
  for (Param* p : trainable.params()) EXPECT_TRUE(p->trainable && p->grad.defined()) << p->name;
}
