// Whole-model parity with PyTorch (python3-torch, float64): the same weights and
// tokens give the same logits, loss and every parameter gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "models/transformer.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

struct ParityCase {
  ModelConfig config;
  int64_t batch;
  int64_t seq_len;
};

void check_parity(const ParityCase& pc, const std::string& tag) {
  TransformerLM model(pc.config);
  model.init_weights(7);
  randomize_params(model.params());
  const int64_t B = pc.batch, T = pc.seq_len, V = pc.config.vocab_size;
  Tensor ids = random_ids({B, T}, static_cast<int32_t>(V), 11);
  Tensor targets = random_ids({B, T}, static_cast<int32_t>(V), 12);
  for (int64_t i = 0; i < targets.numel(); i += 7) targets.data<int32_t>()[i] = -100;  // some ignored

  Cache cache;
  const float loss = model.forward_loss(ids, targets, cache);
  const Tensor logits = cache.get("logits").clone();
  model.backward_loss(cache);

  const std::string dir = ::testing::TempDir();
  const std::string config_path = dir + "/parity_" + tag + ".json";
  const std::string in_path = dir + "/parity_" + tag + "_in.anvt";
  const std::string out_path = dir + "/parity_" + tag + "_out.anvt";
  std::ofstream(config_path) << pc.config.to_json().dump();
  TensorMap inputs{{"ids", ids}, {"targets", targets}};
  for (Param* p : model.params()) inputs[p->name] = p->value;
  write_tensor_file(in_path, inputs);
  run_torch_script("tests/parity/torch_model.py", config_path + " " + in_path + " " + out_path);
  TensorMap ref = read_tensor_file(out_path);

  const double logit_err = max_rel_diff(logits, ref.at("logits").view(logits.shape()));
  EXPECT_LE(logit_err, 1e-5) << tag << " logits";
  const double ref_loss = ref.at("loss").item();
  EXPECT_LE(std::fabs(loss - ref_loss) / std::fabs(ref_loss), 1e-5) << tag << " loss " << loss << " vs " << ref_loss;
  double worst = 0;
  std::string worst_name;
  for (Param* p : model.params()) {
    const double err = max_rel_diff(p->grad, ref.at("grad." + p->name));
    EXPECT_LE(err, 1e-4) << tag << " gradient of " << p->name;
    if (err > worst) { worst = err; worst_name = p->name; }
  }
  std::printf("%s: %zu params, logits rel err %.2e, loss %.6f (torch %.6f), worst grad rel err %.2e (%s)\n",
              tag.c_str(), model.params().size(), logit_err, loss, ref_loss, worst, worst_name.c_str());
}

}  // namespace

TEST(ModelParity, Gpt2MatchesTorch) {
  check_parity({parity_gpt2(), 2, 67}, "gpt2");
}

TEST(ModelParity, LlamaWithGqaMatchesTorch) {
  check_parity({parity_llama(), 2, 72}, "llama_gqa");
}

TEST(ModelParity, LlamaTiedMhaMatchesTorch) {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 515;
  c.hidden_size = 48;
  c.num_hidden_layers = 3;
  c.num_attention_heads = c.num_key_value_heads = 4;
  c.intermediate_size = 100;
  c.max_position_embeddings = 64;
  c.rope_theta = 500000.0;
  c.tie_word_embeddings = true;
  check_parity({c, 1, 64}, "llama_tied");
}
