// Packed sequences and explicit position ids against PyTorch (python3-torch, float64): a batch
// whose rows hold several documents (a block-diagonal causal mask in torch, segment ids in
// anvil's StepContext) with positions restarting at each document, and a batch with
// non-contiguous position ids; logits, loss and every parameter gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "models/step_context.h"
#include "models/transformer.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// Document lengths per row -> i32 [B, T] segment ids.
Tensor segments(const std::vector<std::vector<int64_t>>& docs, int64_t T) {
  Tensor seg = Tensor::empty({static_cast<int64_t>(docs.size()), T}, DType::I32);
  int32_t* s = seg.data<int32_t>();
  for (size_t b = 0; b < docs.size(); ++b) {
    int64_t t = 0;
    for (size_t d = 0; d < docs[b].size(); ++d)
      for (int64_t i = 0; i < docs[b][d]; ++i) s[static_cast<int64_t>(b) * T + t++] = static_cast<int32_t>(d);
    EXPECT_EQ(t, T);
  }
  return seg;
}

void check_parity(const ModelConfig& config, const Tensor& positions, const Tensor& segment_ids,
                  const std::string& tag) {
  TransformerLM model(config);
  model.init_weights(7);
  randomize_params(model.params());
  const int64_t B = positions.size(0), T = positions.size(1), V = config.vocab_size;
  Tensor ids = random_ids({B, T}, static_cast<int32_t>(V), 11);
  Tensor targets = random_ids({B, T}, static_cast<int32_t>(V), 12);
  for (int64_t i = 0; i < targets.numel(); i += 7) targets.data<int32_t>()[i] = -100;

  auto ctx = std::make_shared<StepContext>();
  ctx->position_ids = positions;
  ctx->mask.segment_ids = segment_ids;
  check_step_context(*ctx, B, T, config.max_position_embeddings, tag.c_str());
  Cache cache;
  cache.set_context(ctx);
  const float loss = model.forward_loss(ids, targets, cache);
  const Tensor logits = cache.get("logits").clone();
  model.backward_loss(cache);

  const std::string dir = ::testing::TempDir();
  const std::string config_path = dir + "/packed_" + tag + ".json";
  const std::string in_path = dir + "/packed_" + tag + "_in.anvt";
  const std::string out_path = dir + "/packed_" + tag + "_out.anvt";
  std::ofstream(config_path) << config.to_json().dump();
  TensorMap inputs{{"ids", ids}, {"targets", targets}, {"positions", positions}};
  if (segment_ids.defined()) inputs["segments"] = segment_ids;
  for (Param* p : model.params()) inputs[p->name] = p->value;
  write_tensor_file(in_path, inputs);
  run_torch_script("tests/parity/torch_model.py", config_path + " " + in_path + " " + out_path);
  TensorMap ref = read_tensor_file(out_path);

  // Tolerances as in model_parity_test: f32 against float64 over reductions of <= a few hundred terms.
  EXPECT_LE(max_rel_diff(logits, ref.at("logits").view(logits.shape())), 1e-5) << tag << " logits";
  const double ref_loss = ref.at("loss").item();
  EXPECT_LE(std::fabs(loss - ref_loss) / std::fabs(ref_loss), 1e-5) << tag << " loss " << loss << " vs " << ref_loss;
  for (Param* p : model.params())
    EXPECT_LE(max_rel_diff(p->grad, ref.at("grad." + p->name)), 1e-4) << tag << " gradient of " << p->name;
}

// Rows of 70 tokens: a whole-row document, and documents of 1, 30, 1 and 38 tokens (one
// crossing the kernel's 64-slot block), positions restarting at 0 in each.
Tensor packed_segments() { return segments({{70}, {1, 30, 1, 38}}, 70); }

// Non-contiguous positions: gaps, repeats and a late start (as a tree or a resumed window would give).
Tensor scattered_positions(int64_t B, int64_t T, int64_t max_positions) {
  Tensor pos = Tensor::empty({B, T}, DType::I32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      pos.data<int32_t>()[b * T + t] = static_cast<int32_t>((3 * t / 2 + 5 * b) % max_positions);
  return pos;
}

}  // namespace

TEST(PackedParity, Gpt2PackedDocumentsMatchTorch) {
  const Tensor seg = packed_segments();
  check_parity(parity_gpt2(), positions_from_segments(seg), seg, "gpt2_packed");
}

TEST(PackedParity, LlamaPackedDocumentsMatchTorch) {
  const Tensor seg = packed_segments();
  check_parity(parity_llama(), positions_from_segments(seg), seg, "llama_packed");
}

TEST(PackedParity, Gpt2ExplicitPositionIdsMatchTorch) {
  check_parity(parity_gpt2(), scattered_positions(2, 40, 80), Tensor(), "gpt2_positions");
}

TEST(PackedParity, LlamaExplicitPositionIdsMatchTorch) {
  check_parity(parity_llama(), scattered_positions(2, 50, 128), Tensor(), "llama_positions");
}

TEST(PackedParity, PositionsRestartAtEachDocument) {
  const Tensor pos = positions_from_segments(segments({{3, 1, 2}}, 6));
  const std::vector<int32_t> want{0, 1, 2, 0, 0, 1};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(pos.data<int32_t>()[i], want[static_cast<size_t>(i)]) << i;
}
