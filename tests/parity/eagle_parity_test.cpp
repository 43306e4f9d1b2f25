// The EAGLE drafter's training-time-test forward and its gradients against PyTorch
// (tests/parity/torch_eagle.py, float64; labels parity + spec). The oracle runs the steps as
// EAGLE-3's reference code does — per-step keys kept in a list, each later step attending to the
// step-0 keys of earlier columns and its own column's earlier steps — not as the packed
// drafting-group sequence anvil runs, so the mask, positions, shifts and the backward through
// the chained steps are all checked. Tolerances as model_parity_test (f32 against f64).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "models/eagle_drafter.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;

TEST(EagleParity, TrainingTimeTestMatchesTorch) {
  ModelConfig config = small_llama(true, 4);  // GQA, tied, no biases
  TransformerLM target(config);
  target.init_weights(5);
  randomize_params(target.params());
  EagleDrafter drafter(target, EagleDrafter::default_layers(4));
  drafter.init_weights(6);
  randomize_params(drafter.own_params());
  const int64_t B = 2, T = 9, S = 3, C = config.hidden_size;
  const Tensor ids = random_ids({B, T}, static_cast<int32_t>(config.vocab_size), 21);
  Cache scratch, c;
  HiddenTaps taps;
  taps.layers = drafter.layers();
  target.forward_hidden(ids, scratch, &taps);
  const Tensor weights = random_tensor({B, S * T, C}, 22);
  for (Param* p : drafter.own_params()) p->zero_grad();
  const Tensor y = drafter.forward_train(ids, taps.states, S, c).contiguous().clone();
  drafter.backward_train(weights, c);

  const std::string dir = ::testing::TempDir();
  const std::string config_path = dir + "/eagle_parity.json", in_path = dir + "/eagle_parity_in.anvt",
                    out_path = dir + "/eagle_parity_out.anvt";
  nlohmann::json cfg = config.to_json();
  cfg["ttt_steps"] = S;
  std::ofstream(config_path) << cfg.dump();
  TensorMap inputs{{"ids", ids}, {"weights", weights},
                   {"model.embed_tokens.weight", target.param("model.embed_tokens.weight").value}};
  for (int i = 0; i < 3; ++i) inputs["tap" + std::to_string(i)] = taps.states[i].contiguous();
  for (Param* p : drafter.own_params()) inputs[p->name] = p->value;
  write_tensor_file(in_path, inputs);
  run_torch_script("tests/parity/torch_eagle.py", config_path + " " + in_path + " " + out_path);
  TensorMap ref = read_tensor_file(out_path);

  EXPECT_LE(max_rel_diff(y, ref.at("y").view(y.shape())), 1e-5) << "outputs";
  for (Param* p : drafter.own_params()) {
    const double err = max_rel_diff(p->grad, ref.at("grad." + p->name));
    EXPECT_LE(err, 1e-4) << "gradient of " << p->name;
  }
}
