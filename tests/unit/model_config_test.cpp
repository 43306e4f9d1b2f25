// Model configs: Hugging Face field names, and clear errors for bad shapes.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/support/reference.h"
#include "models/transformer.h"

using namespace anvil;

using anvil::testing::error_of;

TEST(ModelConfig, HeadsMustDivideHiddenSize) {
  ModelConfig c = ModelConfig::llama();
  c.hidden_size = 100;
  c.num_attention_heads = c.num_key_value_heads = 7;
  const std::string msg = error_of([&] { TransformerLM m(c); });
  EXPECT_NE(msg.find("num_attention_heads = 7"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hidden_size = 100"), std::string::npos) << msg;
}

TEST(ModelConfig, KvHeadsMustDivideHeads) {
  ModelConfig c = ModelConfig::llama();
  c.hidden_size = 96;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 4;
  const std::string msg = error_of([&] { c.validate(); });
  EXPECT_NE(msg.find("num_key_value_heads = 4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("num_attention_heads = 6"), std::string::npos) << msg;
}

TEST(ModelConfig, ReadsHuggingFaceFieldNames) {
  const auto llama = nlohmann::json::parse(R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 64,
      "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 172,
      "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
      "tie_word_embeddings": true, "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"})");
  const ModelConfig c = ModelConfig::from_json(llama, "config.json");
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.resolved_head_dim(), 8);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  const auto gpt2 = nlohmann::json::parse(R"({"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768,
      "n_layer": 12, "n_head": 12, "n_positions": 1024, "n_inner": null, "layer_norm_epsilon": 1e-5,
      "activation_function": "gelu_new"})");
  const ModelConfig g = ModelConfig::from_json(gpt2, "gpt2/config.json");
  EXPECT_EQ(g.intermediate_size, 3072);
  EXPECT_EQ(g.num_key_value_heads, 12);
  EXPECT_TRUE(g.tie_word_embeddings);
  // Round trip through our own writer.
  const ModelConfig back = ModelConfig::from_json(c.to_json(), "roundtrip");
  EXPECT_EQ(back.to_json(), c.to_json());
}

TEST(ModelConfig, RejectsUnknownTypeAndWrongFieldTypes) {
  std::string msg = error_of([] { ModelConfig::from_json(nlohmann::json::parse(R"({"model_type": "bert"})"), "x.json"); });
  EXPECT_NE(msg.find("'bert'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("x.json"), std::string::npos) << msg;
  msg = error_of([] {
    ModelConfig::from_json(nlohmann::json::parse(R"({"model_type": "llama", "hidden_size": "big"})"), "y.json");
  });
  EXPECT_NE(msg.find("hidden_size"), std::string::npos) << msg;
  msg = error_of([] { ModelConfig::from_file("/nonexistent/config.json"); });
  EXPECT_NE(msg.find("/nonexistent/config.json"), std::string::npos) << msg;
}

TEST(ModelConfig, ParamNamesFollowHuggingFace) {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 50; c.hidden_size = 16; c.num_hidden_layers = 1; c.num_attention_heads = 4;
  c.num_key_value_heads = 2; c.intermediate_size = 24;
  TransformerLM m(c);
  EXPECT_EQ(m.param("model.layers.0.self_attn.k_proj.weight").value.shape(), (Shape{8, 16}));
  EXPECT_EQ(m.param("lm_head.weight").value.shape(), (Shape{50, 16}));
  EXPECT_EQ(m.param("model.layers.0.mlp.gate_proj.weight").role, ParamRole::Matrix);
  EXPECT_EQ(m.param("model.embed_tokens.weight").role, ParamRole::Embedding);
  const std::string msg = error_of([&] { m.param("model.layers.9.mlp.up_proj.weight"); });
  EXPECT_NE(msg.find("model.layers.9.mlp.up_proj.weight"), std::string::npos);
  ModelConfig g = ModelConfig::gpt2();
  g.vocab_size = 50; g.hidden_size = 16; g.num_hidden_layers = 1; g.num_attention_heads = 2;
  g.num_key_value_heads = 2; g.intermediate_size = 64; g.max_position_embeddings = 32;
  TransformerLM gm(g);
  EXPECT_EQ(gm.param("transformer.h.0.attn.c_attn.weight").value.shape(), (Shape{48, 16}));
  EXPECT_EQ(gm.param("transformer.wpe.weight").value.shape(), (Shape{32, 16}));
}
