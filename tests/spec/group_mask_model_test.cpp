// Drafting groups through a whole TransformerLM (StepContext mask.group_ids and position_ids):
// rows of real tokens followed by the [MASK] blocks of several anchors, checked against the
// model itself on unpacked inputs — the real tokens get the logits of a plain forward over the
// real tokens alone (no mask leaks into them), and the masks of anchor t get those of a plain
// forward over [the real tokens <= t, the masks of t] (positions t + 1 ..).
#include <gtest/gtest.h>

#include <memory>

#include "models/step_context.h"
#include "models/transformer.h"
#include "tests/spec/group_layout.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr int32_t kVocab = 97;
constexpr int64_t kMasks = 4;

std::unique_ptr<TransformerLM> small_model(bool gpt2) {
  ModelConfig c = gpt2 ? ModelConfig::gpt2() : ModelConfig::llama();
  c.vocab_size = kVocab;
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

// The logits of a plain forward (no step context) over one row of ids.
Tensor plain_logits(TransformerLM& model, const std::vector<int32_t>& ids) {
  Cache c;
  return model.forward(Tensor::from_vector(ids, {1, static_cast<int64_t>(ids.size())}), c).clone();
}

}  // namespace

TEST(GroupMaskModel, RealTokensAndEachAnchorsMasksEqualTheirUnpackedForwards) {
  // 68 slots (across the attention kernel's 64-slot blocks); anchors out of order, the first
  // token among them; the masks' token ids are the last ids of the vocabulary ([MASK]_i).
  const std::vector<GroupRun> rows[] = {{{40, {13, 0, 39, 5, 22, 30, 38}, kMasks}}, {{56, {55, 1, 25}, kMasks}}};
  const Tensor groups = i32_rows({group_row(rows[0]), group_row(rows[1])});
  const int64_t B = groups.size(0), T = groups.size(1);
  Tensor ids = random_ids({B, T}, kVocab - kMasks, 5);
  auto ctx = std::make_shared<StepContext>();
  ctx->mask.group_ids = groups;
  ctx->position_ids = positions_from_groups(groups);
  check_step_context(*ctx, B, T, 96, "group_mask_model_test");
  std::vector<int64_t> mask_index(static_cast<size_t>(B * T));  // i of mask i of its anchor
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int32_t a = groups.data<int32_t>()[b * T + t];
      if (a < 0) continue;
      mask_index[static_cast<size_t>(b * T + t)] = ctx->position_ids.data<int32_t>()[b * T + t] - a - 1;
      ids.data<int32_t>()[b * T + t] = kVocab - 1 - static_cast<int32_t>(mask_index[static_cast<size_t>(b * T + t)]);
    }

  for (const bool gpt2 : {true, false}) {
    const char* name = gpt2 ? "gpt2" : "llama";
    auto model = small_model(gpt2);
    Cache packed;
    packed.set_context(ctx);
    const Tensor all = model->forward(ids, packed).clone();  // [B, T, V]
    for (int64_t b = 0; b < B; ++b) {
      const int32_t* row_ids = ids.data<int32_t>() + b * T;
      const int64_t real = rows[b][0].real;
      // Same math over the same keys; blocking differs, so f32 rounding may differ slightly.
      const Tensor alone = plain_logits(*model, std::vector<int32_t>(row_ids, row_ids + real));
      EXPECT_LT(max_rel_diff(all.slice(0, b, b + 1).slice(1, 0, real).contiguous(), alone), 1e-5)
          << name << " row " << b << " real tokens";
      for (int64_t anchor : rows[b][0].anchors) {
        std::vector<int32_t> seq(row_ids, row_ids + anchor + 1);
        std::vector<int64_t> slots;  // the anchor's masks in the packed row, in order
        for (int64_t t = real; t < T; ++t)
          if (groups.data<int32_t>()[b * T + t] == anchor) {
            seq.push_back(row_ids[t]);
            slots.push_back(t);
          }
        ASSERT_EQ(static_cast<int64_t>(slots.size()), kMasks);
        const Tensor ref = plain_logits(*model, seq);
        for (int64_t i = 0; i < kMasks; ++i) {
          const int64_t t = slots[static_cast<size_t>(i)];
          EXPECT_EQ(mask_index[static_cast<size_t>(b * T + t)], i);
          EXPECT_LT(max_rel_diff(all.slice(0, b, b + 1).slice(1, t, t + 1).contiguous(),
                                 ref.slice(1, anchor + 1 + i, anchor + 2 + i).contiguous()),
                    1e-5)
              << name << " row " << b << " anchor " << anchor << " mask " << i;
        }
      }
    }
  }
}
