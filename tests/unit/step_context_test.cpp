// StepContext reached through Cache (set on the root, seen by every child), its aux losses,
// and what a model does with it: contiguous position ids are bitwise the default, and a packed
// row's logits equal each document run on its own.
#include <gtest/gtest.h>

#include <memory>

#include "models/cache.h"
#include "models/step_context.h"
#include "models/transformer.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

TEST(StepContext, EveryChildSeesTheRootsContext) {
  Cache root;
  Cache& early = root.child(2).child(0);  // exists before the context is set
  EXPECT_FALSE(early.context().position_ids.defined()) << "no context: an empty one";
  EXPECT_EQ(early.mutable_context(), nullptr);
  auto ctx = std::make_shared<StepContext>();
  ctx->position_ids = Tensor::zeros({1, 3}, DType::I32);
  root.set_context(ctx);
  EXPECT_EQ(&early.context(), ctx.get());
  EXPECT_EQ(&root.child(5).child(1).context(), ctx.get()) << "a child made later inherits it";
  root.clear();
  EXPECT_EQ(&early.context(), ctx.get()) << "clear() drops tensors, not the context";
  root.set_context(nullptr);
  EXPECT_EQ(early.mutable_context(), nullptr);
}

TEST(StepContext, AuxLossesAreAddedReadAndTaken) {
  StepContext ctx;
  ctx.add_aux_loss({"load_balance", 2.0f, 0.01f});
  ctx.add_aux_loss({"z_loss", 3.0f, 0.5f});
  EXPECT_FLOAT_EQ(ctx.weighted_aux_loss(), 0.02f + 1.5f);
  const auto taken = ctx.take_aux_losses();
  ASSERT_EQ(taken.size(), 2u);
  EXPECT_EQ(taken[0].name, "load_balance");
  EXPECT_TRUE(ctx.aux_losses().empty());
}

TEST(StepContext, ChecksNameWhatIsWrong) {
  StepContext ctx;
  ctx.position_ids = Tensor::full({1, 2}, 9.0, DType::I32);
  EXPECT_NE(error_of([&] { check_step_context(ctx, 1, 2, 8, "here"); }).find("position id 9"), std::string::npos);
  ctx.position_ids = Tensor();
  ctx.mask.segment_ids = Tensor::from_vector(std::vector<int32_t>{1, 0}, {1, 2});
  EXPECT_NE(error_of([&] { check_step_context(ctx, 1, 2, 8, "here"); }).find("decrease at slot 1"), std::string::npos);
}

namespace {
std::unique_ptr<TransformerLM> small_model(bool gpt2) {
  ModelConfig c = gpt2 ? ModelConfig::gpt2() : ModelConfig::llama();
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = gpt2 ? 4 : 2;
  c.intermediate_size = 64;
  c.max_position_embeddings = 96;
  auto m = std::make_unique<TransformerLM>(c);
  m->init_weights(3);
  randomize_params(m->params());
  return m;
}
}  // namespace

TEST(StepContext, ContiguousPositionIdsAreBitwiseTheDefault) {
  for (const bool gpt2 : {true, false}) {
    auto model = small_model(gpt2);
    const Tensor ids = random_ids({2, 70}, 97, 1);
    Cache plain;
    const Tensor a = model->forward(ids, plain).clone();
    auto ctx = std::make_shared<StepContext>();
    ctx->position_ids = Tensor::empty({2, 70}, DType::I32);
    for (int64_t i = 0; i < 140; ++i) ctx->position_ids.data<int32_t>()[i] = static_cast<int32_t>(i % 70);
    Cache with;
    with.set_context(ctx);
    const Tensor b = model->forward(ids, with);
    // GPT-2's wpe: a gather then one add per element, as the sliced add does.
    EXPECT_EQ(max_abs_diff(a, b), 0.0) << (gpt2 ? "gpt2" : "llama");
  }
}

// The independent check of the mask inside a model: a packed row (restarted positions,
// document boundaries) gives each document the logits it gets alone.
TEST(StepContext, PackedRowEqualsEachDocumentAlone) {
  for (const bool gpt2 : {true, false}) {
    auto model = small_model(gpt2);
    const int64_t lens[] = {30, 1, 39};
    const Tensor ids = random_ids({1, 70}, 97, 2);
    auto ctx = std::make_shared<StepContext>();
    ctx->mask.segment_ids = Tensor::empty({1, 70}, DType::I32);
    int64_t t = 0;
    for (int d = 0; d < 3; ++d)
      for (int64_t i = 0; i < lens[d]; ++i) ctx->mask.segment_ids.data<int32_t>()[t++] = d;
    ctx->position_ids = positions_from_segments(ctx->mask.segment_ids);
    Cache packed;
    packed.set_context(ctx);
    const Tensor all = model->forward(ids, packed).clone();
    int64_t start = 0;
    for (int d = 0; d < 3; ++d) {
      Cache alone;
      const Tensor one = model->forward(ids.slice(1, start, start + lens[d]).contiguous(), alone);
      // Same math; the packed row blocks keys differently, so f32 rounding differs slightly.
      EXPECT_LT(max_rel_diff(all.slice(1, start, start + lens[d]).contiguous(), one), 1e-5)
          << (gpt2 ? "gpt2" : "llama") << " document " << d;
      start += lens[d];
    }
  }
}
