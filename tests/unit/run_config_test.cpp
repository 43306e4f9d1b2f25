// The run config: YAML -> typed RunConfig, --set overrides, one clear error per mistake (with the
// file:line or --set argument, the YAML path, the value and the fix), the resolved-YAML round trip,
// key suggestions and how doubles are written. run_config_fields_test.cpp checks single fields
// (device, precision, vocab_size, trainable globs, model variants, ZeRO and buckets).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>

#include "tests/support/reference.h"
#include "tests/unit/run_config_fixture.h"
#include "core/error.h"
#include "trainer/config.h"
#include "trainer/config_schema.h"
#include "trainer/did_you_mean.h"

using namespace anvil;
namespace fs = std::filesystem;

using anvil::testing::contains;
using anvil::testing::error_of;
using anvil::testing::kMinimal;
using anvil::testing::RunConfigTest;

namespace {

TEST_F(RunConfigTest, FullConfigParsesToTypedValues) {
  const RunConfig c = load(R"(run: {name: demo, out_dir: /tmp/anvil-runs/demo, seed: 7, device: cpu, threads: 2}
model:
  type: llama
  vocab_size: 512
  hidden_size: 96
  num_hidden_layers: 3
  num_attention_heads: 6
  num_key_value_heads: 2
  intermediate_size: 256
  max_position_embeddings: 512
  rope_theta: 500000.0
  norm_eps: 1.0e-5
  initializer_range: 0.01
  tie_word_embeddings: true
  attention_bias: false
  mlp_bias: true
data:       {train: data/kjv.h5, seq_len: 256, valid_fraction: 0.05, shuffle: false}
tokenizer:  {path: data/tokenizer.json}
optimizer:  {name: adamw, lr: 3.0e-4, beta1: 0.8, beta2: 0.99, eps: 1.0e-7, weight_decay: 0.05,
             decay_embeddings: true, decay_norms_and_biases: true, grad_clip: 0.5}
schedule:   {kind: wsd, warmup_steps: 50, min_lr_ratio: 0.0, decay_fraction: 0.3}
training:   {steps: 2000, micro_batch_size: 4, grad_accum_steps: 2, trainable: ["model.layers.*", "lm_head.*"],
             eval_every: 200, eval_batches: 10, sample_every: 500, sample_prompt: "In the beginning",
             sample_tokens: 32, sample_temperature: 0.7, sample_top_k: 20, sample_top_p: 0.9, ignore_index: -1}
parallel:   {dp: 2, tp: 1, pp: 3, sp: 1}
checkpoint: {dir: /tmp/anvil-runs/ckpt, every: 250, keep: 0, resume: none}
logging:    {every: 5, jsonl: false}
)");
  EXPECT_EQ(c.run.name, "demo");
  EXPECT_EQ(c.run.out_dir, "/tmp/anvil-runs/demo");
  EXPECT_EQ(c.run.seed, 7);
  EXPECT_EQ(c.run.device, "cpu");
  EXPECT_EQ(c.run.threads, 2);
  EXPECT_EQ(c.model.model_type, "llama");
  EXPECT_EQ(c.model.vocab_size, 512);
  EXPECT_FALSE(c.model.vocab_size_auto);
  EXPECT_EQ(c.model.hidden_size, 96);
  EXPECT_EQ(c.model.num_hidden_layers, 3);
  EXPECT_EQ(c.model.num_attention_heads, 6);
  EXPECT_EQ(c.model.num_key_value_heads, 2);
  EXPECT_EQ(c.model.head_dim, 16);  // resolved from hidden_size / heads
  EXPECT_EQ(c.model.intermediate_size, 256);
  EXPECT_EQ(c.model.max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(c.model.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.model.norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.model.initializer_range, 0.01);
  EXPECT_TRUE(c.model.tie_word_embeddings);
  EXPECT_FALSE(c.model.attention_bias);
  EXPECT_TRUE(c.model.mlp_bias);
  EXPECT_TRUE(c.model.config_file.empty());
  EXPECT_EQ(c.data.train, abs("data/kjv.h5"));  // relative to the YAML file's directory
  EXPECT_EQ(c.data.seq_len, 256);
  EXPECT_DOUBLE_EQ(c.data.valid_fraction, 0.05);
  EXPECT_FALSE(c.data.shuffle);
  EXPECT_EQ(c.tokenizer.path, abs("data/tokenizer.json"));
  EXPECT_EQ(c.optimizer.name, "adamw");
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 3e-4);
  EXPECT_DOUBLE_EQ(c.optimizer.adamw.beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.optimizer.adamw.beta2, 0.99);
  EXPECT_DOUBLE_EQ(c.optimizer.adamw.eps, 1e-7);
  EXPECT_DOUBLE_EQ(c.optimizer.adamw.weight_decay, 0.05);
  EXPECT_TRUE(c.optimizer.adamw.decay_embeddings);
  EXPECT_TRUE(c.optimizer.adamw.decay_vectors);
  EXPECT_DOUBLE_EQ(c.optimizer.grad_clip, 0.5);
  EXPECT_EQ(c.schedule.kind, "wsd");
  EXPECT_EQ(c.schedule.warmup_steps, 50);
  EXPECT_DOUBLE_EQ(c.schedule.min_lr_ratio, 0.0);
  EXPECT_DOUBLE_EQ(c.schedule.decay_fraction, 0.3);
  EXPECT_DOUBLE_EQ(c.schedule.peak_lr, 3e-4);  // from optimizer.lr
  EXPECT_EQ(c.schedule.total_steps, 2000);     // from training.steps
  EXPECT_EQ(c.training.steps, 2000);
  EXPECT_EQ(c.training.micro_batch_size, 4);
  EXPECT_EQ(c.training.grad_accum_steps, 2);
  EXPECT_EQ(c.training.trainable, (std::vector<std::string>{"model.layers.*", "lm_head.*"}));
  EXPECT_EQ(c.training.eval_every, 200);
  EXPECT_EQ(c.training.eval_batches, 10);
  EXPECT_EQ(c.training.sample_every, 500);
  EXPECT_EQ(c.training.sample_prompt, "In the beginning");
  EXPECT_EQ(c.training.sample_tokens, 32);
  EXPECT_DOUBLE_EQ(c.training.sample_temperature, 0.7);
  EXPECT_EQ(c.training.sample_top_k, 20);
  EXPECT_DOUBLE_EQ(c.training.sample_top_p, 0.9);
  EXPECT_EQ(c.training.ignore_index, -1);
  EXPECT_EQ(c.parallel.dp, 2);
  EXPECT_EQ(c.parallel.tp, 1);
  EXPECT_EQ(c.parallel.pp, 3);
  EXPECT_EQ(c.parallel.sp, 1);
  EXPECT_EQ(c.parallel.world_size(), 6);
  EXPECT_EQ(c.checkpoint.dir, "/tmp/anvil-runs/ckpt");
  EXPECT_EQ(c.checkpoint.every, 250);
  EXPECT_EQ(c.checkpoint.keep, 0);
  EXPECT_EQ(c.checkpoint.resume, "none");
  EXPECT_EQ(c.logging.every, 5);
  EXPECT_FALSE(c.logging.jsonl);
  EXPECT_EQ(c.tokens_per_step_per_replica(), 4 * 2 * 256);
}

TEST_F(RunConfigTest, DefaultsAreFilledIn) {
  const RunConfig c = load(kMinimal);
  EXPECT_EQ(c.run.name, "config");  // the YAML file's stem
  EXPECT_EQ(c.run.out_dir, (fs::current_path() / "runs" / "config").string());
  EXPECT_EQ(c.run.seed, 1234);
  EXPECT_EQ(c.run.device, "cpu");
  EXPECT_EQ(c.run.threads, 0);
  const ModelConfig llama = ModelConfig::llama();
  EXPECT_EQ(c.model.model_type, "llama");
  EXPECT_EQ(c.model.vocab_size, llama.vocab_size);
  EXPECT_EQ(c.model.num_key_value_heads, 4);  // = num_attention_heads, as Hugging Face does
  EXPECT_EQ(c.model.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.model.rope_theta, llama.rope_theta);
  EXPECT_DOUBLE_EQ(c.model.norm_eps, llama.norm_eps);
  EXPECT_EQ(c.model.hidden_act, "silu");
  EXPECT_EQ(c.data.seq_len, 128);  // = max_position_embeddings
  EXPECT_DOUBLE_EQ(c.data.valid_fraction, 0.01);
  EXPECT_TRUE(c.data.shuffle);
  EXPECT_EQ(c.optimizer.name, "adamw");
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 1e-3);
  EXPECT_DOUBLE_EQ(c.optimizer.adamw.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.optimizer.adamw.weight_decay, 0.1);
  EXPECT_FALSE(c.optimizer.adamw.decay_embeddings);
  EXPECT_DOUBLE_EQ(c.optimizer.grad_clip, 1.0);
  EXPECT_EQ(c.schedule.kind, "cosine");
  EXPECT_EQ(c.schedule.warmup_steps, 0);
  EXPECT_EQ(c.schedule.total_steps, 100);
  EXPECT_DOUBLE_EQ(c.schedule.peak_lr, 1e-3);
  EXPECT_EQ(c.training.micro_batch_size, 8);
  EXPECT_EQ(c.training.grad_accum_steps, 1);
  EXPECT_EQ(c.training.trainable, std::vector<std::string>{"*"});
  EXPECT_EQ(c.training.eval_every, 100);
  EXPECT_EQ(c.training.ignore_index, -100);
  EXPECT_EQ(c.parallel.world_size(), 1);
  EXPECT_EQ(c.checkpoint.dir, c.run.out_dir + "/checkpoints");
  EXPECT_EQ(c.checkpoint.every, 500);
  EXPECT_EQ(c.checkpoint.keep, 3);
  EXPECT_EQ(c.checkpoint.resume, "auto");
  EXPECT_EQ(c.logging.every, 10);
  EXPECT_TRUE(c.logging.jsonl);

  // GPT-2's preset and its derived MLP width.
  const RunConfig g = load(std::string(kMinimal) + "  type: gpt2\n");
  EXPECT_EQ(g.model.model_type, "gpt2");
  EXPECT_EQ(g.model.intermediate_size, 128);  // written explicitly above
  const RunConfig g2 = load(R"(data: {train: data/kjv.h5}
tokenizer: {path: data/tokenizer.json}
training: {steps: 10}
model: {type: gpt2, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4}
)");
  EXPECT_EQ(g2.model.intermediate_size, 256);  // 4 * hidden_size
  EXPECT_TRUE(g2.model.tie_word_embeddings);
  EXPECT_TRUE(g2.model.attention_bias);
  EXPECT_EQ(g2.model.hidden_act, "gelu_new");
  EXPECT_EQ(g2.model.max_position_embeddings, 1024);
  EXPECT_EQ(g2.data.seq_len, 1024);
}

TEST_F(RunConfigTest, ReadsAHuggingFaceConfigJson) {
  write("hf/tiny/config.json", R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 64,
      "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 172,
      "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": true})");
  const std::string yaml = R"(model:
  config: hf/tiny/config.json
data: {train: data/kjv.h5, seq_len: 64}
tokenizer: {path: data/tokenizer.json}
training: {steps: 10}
)";
  const RunConfig c = load(yaml);
  EXPECT_EQ(c.model.config_file, abs("hf/tiny/config.json"));
  EXPECT_EQ(c.model.vocab_size, 1000);
  EXPECT_EQ(c.model.num_hidden_layers, 3);
  EXPECT_EQ(c.model.num_key_value_heads, 2);
  EXPECT_EQ(c.model.head_dim, 8);
  EXPECT_EQ(c.model.max_position_embeddings, 256);
  EXPECT_DOUBLE_EQ(c.model.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.model.norm_eps, 1e-5);
  EXPECT_TRUE(c.model.tie_word_embeddings);

  // Fields next to `config` override the file; vocab_size: auto defers to the tokenizer.
  const RunConfig o = load(yaml, {"model.max_position_embeddings=128", "model.vocab_size=auto"});
  EXPECT_EQ(o.model.max_position_embeddings, 128);
  EXPECT_TRUE(o.model.vocab_size_auto);
  EXPECT_EQ(o.model.num_key_value_heads, 2);  // still the file's

  std::string msg = error(yaml, {"model.type=gpt2"});
  EXPECT_HAS(msg, "model.type");
  EXPECT_HAS(msg, "model_type 'llama'");
  EXPECT_EQ(load(yaml, {"model.num_hidden_layers=5"}).model.num_hidden_layers, 5);
  msg = error(yaml, {"model.num_key_value_heads=3"});  // through ModelConfig::validate
  EXPECT_HAS(msg, "num_key_value_heads = 3");
  EXPECT_HAS(msg, "num_attention_heads = 8");
  EXPECT_HAS(msg, abs("hf/tiny/config.json"));

  msg = error(R"(model: {config: hf/missing/config.json}
data: {train: data/kjv.h5}
tokenizer: {path: data/tokenizer.json}
training: {steps: 10}
)");
  EXPECT_HAS(msg, "config.yaml:1:");
  EXPECT_HAS(msg, "model.config");
  EXPECT_HAS(msg, "hf/missing/config.json");
  EXPECT_HAS(msg, abs("hf/missing/config.json"));

  write("hf/bad/config.json", R"({"model_type": "llama", "hidden_size": "big"})");
  msg = error(yaml, {"model.config=" + abs("hf/bad/config.json")});
  EXPECT_HAS(msg, "model.config");
  EXPECT_HAS(msg, "hidden_size");
}

TEST_F(RunConfigTest, OverridesAreAppliedBeforeValidation) {
  const RunConfig c = load(kMinimal, {"training.steps=50", "training.trainable=[\"a.*\", \"b\"]",
                                      "parallel={dp: 2, tp: 2}", "training.sample_prompt=In the beginning",
                                      "optimizer.lr=3e-4", "data.shuffle=false", "run.name=exp1"});
  EXPECT_EQ(c.training.steps, 50);
  EXPECT_EQ(c.schedule.total_steps, 50);
  EXPECT_EQ(c.training.trainable, (std::vector<std::string>{"a.*", "b"}));
  EXPECT_EQ(c.parallel.dp, 2);
  EXPECT_EQ(c.parallel.tp, 2);
  EXPECT_EQ(c.parallel.pp, 1);
  EXPECT_EQ(c.training.sample_prompt, "In the beginning");
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 3e-4);
  EXPECT_FALSE(c.data.shuffle);
  EXPECT_EQ(c.run.name, "exp1");
  // A new section, and the last --set of a key wins.
  const RunConfig l = load(kMinimal, {"logging.every=3", "logging.every=4"});
  EXPECT_EQ(l.logging.every, 4);
  // Relative paths given with --set start from the working directory, not the config's.
  const std::string msg_cwd = error(kMinimal, {"data.train=data/kjv.h5"});
  EXPECT_HAS(msg_cwd, (fs::current_path() / "data/kjv.h5").string());
  EXPECT_HAS(msg_cwd, "current directory");

  // Overrides get the same checks, and the messages name the --set argument.
  std::string msg = error(kMinimal, {"training.stpes=10"});
  EXPECT_HAS(msg, "--set training.stpes=10");
  EXPECT_HAS(msg, "did you mean training.steps?");
  msg = error(kMinimal, {"trainig.steps=10"});
  EXPECT_HAS(msg, "--set trainig.steps=10: trainig: unknown section");
  EXPECT_HAS(msg, "did you mean training?");
  msg = error(kMinimal, {"training.steps=ten"});
  EXPECT_HAS(msg, "--set training.steps=ten");
  EXPECT_HAS(msg, "expected a whole number");
  msg = error(kMinimal, {"training.steps=-5"});
  EXPECT_HAS(msg, "training.steps: must be at least 1, got -5");
  msg = error(kMinimal, {"parallel={dp: 0}"});
  EXPECT_HAS(msg, "--set parallel={dp: 0}");
  EXPECT_HAS(msg, "parallel.dp");

  // Malformed --set arguments.
  msg = error(kMinimal, {"training.steps"});
  EXPECT_HAS(msg, "--set training.steps: missing '='");
  EXPECT_HAS(msg, "section.key=value");
  msg = error(kMinimal, {"training.steps.max=3"});
  EXPECT_HAS(msg, "3 levels");
  msg = error(kMinimal, {"=3"});
  EXPECT_HAS(msg, "is not a key path");
  msg = error(kMinimal, {"training..steps=3"});
  EXPECT_HAS(msg, "is not a key path");
  msg = error(kMinimal, {"training.trainable=[a, b"});
  EXPECT_HAS(msg, "not valid YAML");
}

TEST_F(RunConfigTest, UnknownKeysSuggestTheClosestValidKey) {
  std::string msg = error(std::string(kMinimal) + "optimizer:\n  lr: 1.0e-3\n  wieght_decay: 0.1\n");
  EXPECT_HAS(msg, "config.yaml:15:3");
  EXPECT_HAS(msg, "optimizer.wieght_decay");
  EXPECT_HAS(msg, "unknown key");
  EXPECT_HAS(msg, "did you mean optimizer.weight_decay?");

  msg = error(R"(data: {train: data/kjv.h5}
tokenizer: {path: data/tokenizer.json}
training:
  stpes: 100
)");
  EXPECT_HAS(msg, "config.yaml:4:3: training.stpes: unknown key — did you mean training.steps?");

  msg = error(std::string(kMinimal) + "traning: {eval_every: 10}\n");
  EXPECT_HAS(msg, "traning: unknown section — did you mean training?");
  msg = error(std::string(kMinimal) + "steps: 100\n");  // a key outside its section
  EXPECT_HAS(msg, "did you mean training.steps?");
  msg = error(kMinimal, {"training.lr=0.1"});  // a key in the wrong section
  EXPECT_HAS(msg, "did you mean optimizer.lr?");
  msg = error(kMinimal, {"training.batch_size=4"});
  EXPECT_HAS(msg, "did you mean training.micro_batch_size?");
  msg = error(kMinimal, {"model.rms_norm_eps=1e-5"});
  EXPECT_HAS(msg, "did you mean model.norm_eps?");
  msg = error(kMinimal, {"logging.zzz=1"});  // nothing close: list the valid keys
  EXPECT_HAS(msg, "valid keys in logging: every, jsonl");

  msg = error(std::string(kMinimal) + "logging:\n  every: 5\n  every: 6\n");
  EXPECT_HAS(msg, "config.yaml:15:3: logging.every: appears twice (first at line 14)");
}

TEST_F(RunConfigTest, WrongTypesAreNamed) {
  const std::string base = R"(data: {train: data/kjv.h5}
tokenizer: {path: data/tokenizer.json}
model: {hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, max_position_embeddings: 128}
)";
  std::string msg = error(base + "training:\n  steps: \"ten\"\n");
  EXPECT_HAS(msg, "config.yaml:5:10: training.steps: expected a whole number, got \"ten\"");
  msg = error(base + "training:\n  steps: \"10\"\n");
  EXPECT_HAS(msg, "remove the quotes");
  msg = error(base + "training:\n  steps: 1.5\n");
  EXPECT_HAS(msg, "expected a whole number, got '1.5'");
  msg = error(base + "training:\n  steps:\n");
  EXPECT_HAS(msg, "training.steps: has no value");
  msg = error(base + "training:\n  steps: [1, 2]\n");
  EXPECT_HAS(msg, "got a list");
  msg = error(base + "training: {steps: 10, trainable: {a: 1}}\n");
  EXPECT_HAS(msg, "training.trainable: expected a list of strings");
  msg = error(base + "training: {steps: 10}\noptimizer: {lr: fast}\n");
  EXPECT_HAS(msg, "optimizer.lr: expected a number, got 'fast'");
  msg = error(base + "training: {steps: 10}\ndata: {shuffle: maybe}\n");  // a second `data:` section
  EXPECT_HAS(msg, "config.yaml:5:1: data: appears twice (first at line 1)");
  msg = error(base + "training: {steps: 10}\nlogging: {jsonl: maybe}\n");
  EXPECT_HAS(msg, "logging.jsonl: expected true or false, got 'maybe'");
  msg = error(base + "training: 10\n");
  EXPECT_HAS(msg, "training: expected a mapping of keys");
  msg = error(base + "training: {steps: 10}\nmodel2: {}\n");
  EXPECT_HAS(msg, "model2: unknown section — did you mean model?");
  // Whole numbers may be written in exponent form.
  EXPECT_EQ(load(base + "training: {steps: 1e3}\n").training.steps, 1000);
}

TEST_F(RunConfigTest, OutOfRangeValuesAreRejected) {
  struct Case {
    std::string set, expect1, expect2;
    std::string where = "";  // default: the --set argument
  };
  const std::vector<Case> cases = {
      {"optimizer.lr=-0.001", "optimizer.lr: must be positive, got -0.001", ""},
      {"optimizer.beta2=1.0", "optimizer.beta2: must be in [0, 1)", ""},
      {"optimizer.eps=0", "optimizer.eps: must be positive", ""},
      {"optimizer.name=lion", "'lion' is not valid", "adamw, muon, soap or cosmos"},
      {"optimizer.name=adam", "did you mean adamw?", "adamw, muon, soap or cosmos"},
      {"optimizer.muon_scale=kj", "'kj' is not valid", "keller"},
      {"optimizer.cosmos_rank=0", "must be >= 1", "cosmos_rank"},
      {"optimizer.soap_beta2=1", "must be in [0, 1)", "soap_beta2"},
      {"training.grad_accum_steps=0", "training.grad_accum_steps: must be at least 1 (1 = no accumulation), got 0", ""},
      {"training.micro_batch_size=0", "training.micro_batch_size: must be at least 1", ""},
      {"training.trainable=[]", "training.trainable: is an empty list", ""},
      {"training.sample_top_p=0", "training.sample_top_p: must be in (0, 1]", ""},
      {"training.ignore_index=5", "training.ignore_index: must be negative", ""},
      {"schedule.warmup_steps=500", "schedule.warmup_steps: 500 exceeds training.steps = 100", ""},
      {"schedule.min_lr_ratio=1.5", "schedule.min_lr_ratio: must be in [0, 1], got 1.5", ""},
      {"schedule.kind=cosin", "'cosin' is not valid — did you mean cosine?", "constant, cosine, linear or wsd"},
      {"parallel.tp=0", "parallel.tp: must be at least 1", ""},
      {"parallel.pp=3", "parallel.pp: 3 pipeline stages exceed model.num_hidden_layers = 2", ""},
      {"run.device=gpu", "run.device: 'gpu' is not a device — did you mean cuda?", "cpu or cuda"},
      {"run.device=cuda:1", "run.device: 'cuda:1' is not a device", "local rank"},
      {"run.seed=-1", "run.seed: must be >= 0", ""},
      {"data.valid_fraction=1", "data.valid_fraction: must be in [0, 1), got 1", ""},
      {"data.valid_fraction=0", "training.eval_every: 100 asks for evaluation", "data.valid_fraction = 0",
       "config.yaml:5:1"},  // the default eval_every conflicts: point at the training section
      {"model.num_attention_heads=5", "num_attention_heads = 5 does not divide hidden_size = 64", ""},
      {"model.type=bert", "model.type: 'bert' is not valid", "gpt2, llama, qwen2 or mistral"},
      {"model.vocab_size=-3", "model.vocab_size: must be positive", "auto"},
      {"model.vocab_size=many", "model.vocab_size: expected a whole number or auto", ""},
      {"checkpoint.resume=autp", "checkpoint.resume: file not found: autp", "did you mean auto?"},
      {"logging.every=0", "logging.every: must be at least 1", ""},
  };
  for (const Case& c : cases) {
    const std::string msg = error(kMinimal, {c.set});
    EXPECT_HAS(msg, c.where.empty() ? "--set " + c.set : c.where);
    EXPECT_HAS(msg, c.expect1);
    if (!c.expect2.empty()) EXPECT_HAS(msg, c.expect2);
  }
  // Every optimizer runs under ZeRO (the matrix optimizers own whole matrices per dp rank).
  for (const char* name : {"muon", "soap", "cosmos"})
    EXPECT_EQ(load(kMinimal, {std::string("optimizer.name=") + name, "optimizer.zero=2"}).optimizer.zero, 2) << name;
  // The same mistake in the file points at its line.
  const std::string msg = error(std::string(kMinimal) + "optimizer:\n  lr: -1.0\n");
  EXPECT_HAS(msg, "config.yaml:14:7: optimizer.lr: must be positive, got -1");
  // Model divisibility goes through ModelConfig::validate and points at the field.
  const std::string heads = error(std::string(kMinimal) + "  num_key_value_heads: 3\n");
  EXPECT_HAS(heads, "config.yaml:13:24: model.num_key_value_heads");
  EXPECT_HAS(heads, "num_key_value_heads = 3 does not divide num_attention_heads = 4");
}

TEST_F(RunConfigTest, MissingFilesAndRequiredFields) {
  std::string msg = error(R"(data:
  train: data/missing.h5
tokenizer: {path: data/tokenizer.json}
training: {steps: 10}
)");
  EXPECT_HAS(msg, "config.yaml:2:10: data.train: file not found: data/missing.h5");
  EXPECT_HAS(msg, abs("data/missing.h5"));
  EXPECT_HAS(msg, "anvil data prepare");

  msg = error(R"(data: {train: data/kjv.h5}
tokenizer: {path: /nonexistent/tokenizer.json}
training: {steps: 10}
)");
  EXPECT_HAS(msg, "tokenizer.path: file not found: /nonexistent/tokenizer.json");
  msg = error("data: {train: data}\ntokenizer: {path: data/tokenizer.json}\ntraining: {steps: 10}\n");
  EXPECT_HAS(msg, "data.train: " + abs("data") + " is a directory");

  msg = error("tokenizer: {path: data/tokenizer.json}\ntraining: {steps: 10}\n");
  EXPECT_HAS(msg, "data.train: is required but missing");
  msg = error("data: {train: data/kjv.h5}\ntraining: {steps: 10}\n");
  EXPECT_HAS(msg, "tokenizer.path: is required but missing");
  msg = error("data: {train: data/kjv.h5}\ntokenizer: {path: data/tokenizer.json}\ntraining: {eval_every: 5}\n");
  EXPECT_HAS(msg, "config.yaml:3:1: training.steps: is required but missing");
  msg = error("");
  EXPECT_HAS(msg, "config.yaml: the config is empty");
  msg = error("data: [unclosed\n");
  EXPECT_HAS(msg, "not valid YAML");
  msg = error_of([] { load_run_config("/nonexistent/run.yaml", {}); });
  EXPECT_HAS(msg, "config file not found: /nonexistent/run.yaml");
}

TEST_F(RunConfigTest, SeqLenBeyondMaxPositions) {
  const std::string msg = error(std::string(kMinimal) + "  seq_len_dummy: 0\n");
  EXPECT_HAS(msg, "model.seq_len_dummy: unknown key");
  const std::string too_long = error(kMinimal, {"data.seq_len=256"});
  EXPECT_HAS(too_long, "data.seq_len: 256 exceeds model.max_position_embeddings = 128");
  EXPECT_HAS(too_long, "lower data.seq_len or raise model.max_position_embeddings");
  EXPECT_EQ(load(kMinimal, {"data.seq_len=128"}).data.seq_len, 128);
}

TEST_F(RunConfigTest, ResolvedYamlRoundTrips) {
  write("hf/config.json", R"({"model_type": "llama", "vocab_size": 1000, "hidden_size": 64,
      "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 256})");
  fs::create_directories(dir_ / "old_ckpt");
  const RunConfig a = load(R"(run: {name: "123", seed: 99}
model: {config: hf/config.json, vocab_size: auto, rope_theta: 12345.678901234567}
data: {train: data/kjv.h5, seq_len: 64, valid_fraction: 0.1}
tokenizer: {path: data/tokenizer.json}
optimizer: {lr: 0.0003, weight_decay: 0.0, grad_clip: 0}
schedule: {kind: linear, warmup_steps: 7}
training: {steps: 70, trainable: ["model.layers.?.mlp.*", "lm_head.weight"],
           sample_prompt: " In the beginning: God #1", sample_temperature: 0.1}
checkpoint: {resume: old_ckpt}
)");
  const std::string text = to_yaml(a);
  const std::string path = write("resolved/config.yaml", text);
  const RunConfig b = load_run_config(path, {});
  EXPECT_TRUE(same_settings(a, b)) << text;
  for (const auto& d : config_differences(a, b)) ADD_FAILURE() << d;
  // Writing is a fixed point from the first reload on (all but the first line, which names the source).
  const std::string again = to_yaml(b);
  const std::string third = to_yaml(load_run_config(write("resolved2/config.yaml", again), {}));
  EXPECT_EQ(third.substr(third.find('\n')), again.substr(again.find('\n')));
  EXPECT_EQ(b.run.name, "123");
  EXPECT_TRUE(b.model.vocab_size_auto);
  EXPECT_EQ(b.model.config_file, "");  // the resolved YAML stands alone: no config.json needed to reload it
  EXPECT_HAS(text, "model:  # read from " + abs("hf/config.json"));
  EXPECT_EQ(b.model.vocab_size, 0);
  EXPECT_EQ(b.model.num_hidden_layers, 2);
  EXPECT_EQ(b.model.max_position_embeddings, 256);
  EXPECT_DOUBLE_EQ(b.model.rope_theta, 12345.678901234567);
  EXPECT_EQ(b.model.rope_theta, a.model.rope_theta);  // bit-exact
  EXPECT_EQ(b.training.sample_prompt, " In the beginning: God #1");
  EXPECT_EQ(b.training.trainable, a.training.trainable);
  EXPECT_EQ(b.checkpoint.resume, abs("old_ckpt"));
  EXPECT_EQ(b.data.train, a.data.train);
  EXPECT_EQ(b.run.out_dir, a.run.out_dir);
  EXPECT_EQ(b.schedule.total_steps, 70);

  // Every key of the schema is written out (model.config only as the comment above).
  for (const auto& section : run_config_schema())
    for (const auto& key : section.keys)
      if (section.section + "." + key != "model.config") EXPECT_HAS(text, "\n  " + key + ":");
  EXPECT_HAS(text, "vocab_size: auto");

  // A changed setting shows up in the differences.
  RunConfig c = b;
  c.training.steps = 71;
  c.optimizer.adamw.decay_vectors = true;
  const auto diffs = config_differences(b, c);
  ASSERT_EQ(diffs.size(), 2u);
  EXPECT_EQ(diffs[0], "optimizer.decay_norms_and_biases: false -> true");
  EXPECT_EQ(diffs[1], "training.steps: 70 -> 71");
}

TEST_F(RunConfigTest, Gpt2ConfigRoundTrips) {
  const RunConfig a = load(R"(model: {type: gpt2, vocab_size: 300, hidden_size: 48, num_hidden_layers: 2,
         num_attention_heads: 3, max_position_embeddings: 64, norm_eps: 1.0e-5}
data: {train: data/kjv.h5, valid_fraction: 0}
tokenizer: {path: data/tokenizer.json}
training: {steps: 3, eval_every: 0, sample_every: 1, sample_prompt: "yes"}
)");
  EXPECT_EQ(a.model.intermediate_size, 192);
  const RunConfig b = load_run_config(write("resolved.yaml", to_yaml(a)), {});
  for (const auto& d : config_differences(a, b)) ADD_FAILURE() << d;
  EXPECT_EQ(b.model.model_type, "gpt2");
  EXPECT_EQ(b.model.intermediate_size, 192);
  EXPECT_TRUE(b.model.tie_word_embeddings);
  EXPECT_EQ(b.model.hidden_act, "gelu_new");
  EXPECT_EQ(b.training.sample_prompt, "yes");  // a string, though YAML 1.1 would read yes as a bool
  EXPECT_DOUBLE_EQ(b.data.valid_fraction, 0.0);
}

TEST_F(RunConfigTest, TheDocumentedExampleLoads) {
  std::ifstream in(std::string(ANVIL_SOURCE_DIR) + "/trainer/README.md");
  ASSERT_TRUE(in.good());
  const std::string readme((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t begin = readme.find("```yaml\n");
  ASSERT_NE(begin, std::string::npos);
  const size_t end = readme.find("```", begin + 8);
  const RunConfig c = load(readme.substr(begin + 8, end - begin - 8));
  EXPECT_EQ(c.run.name, "demo");
  EXPECT_TRUE(c.model.vocab_size_auto);
  EXPECT_EQ(c.model.intermediate_size, 688);
  EXPECT_EQ(c.training.steps, 1000);
  EXPECT_EQ(c.checkpoint.dir, c.run.out_dir + "/checkpoints");
  // Its defaults are the real defaults: the example differs from the minimal config only where it says so.
  const RunConfig minimal = load(R"(data: {train: data/kjv.h5}
tokenizer: {path: data/tokenizer.json}
training: {steps: 1000}
run: {name: demo}
model: {vocab_size: auto, hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, intermediate_size: 688,
        max_position_embeddings: 256}
)");
  for (const auto& d : config_differences(minimal, c)) ADD_FAILURE() << d;
}

TEST(RunConfigSuggestions, EditDistanceAndClosestMatch) {
  EXPECT_EQ(edit_distance("stpes", "steps"), 1u);  // one swap
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(closest_match("stpes", {"steps", "eval_every"}), "steps");
  EXPECT_EQ(closest_match("warmup", {"kind", "warmup_steps"}), "warmup_steps");
  EXPECT_EQ(closest_match("xyz", {"steps", "eval_every"}), "");
  EXPECT_EQ(join_alternatives({"a", "b", "c"}), "a, b or c");
}

TEST(RunConfigYaml, DoublesAreShortExactAndReadableByYaml11) {
  EXPECT_EQ(format_config_double(0.001), "0.001");
  EXPECT_EQ(format_config_double(10000.0), "10000.0");
  EXPECT_EQ(format_config_double(1e-8), "1.0e-08");
  EXPECT_EQ(format_config_double(1.0), "1.0");
  EXPECT_EQ(format_config_double(-0.5), "-0.5");
  EXPECT_EQ(format_config_double(1e20), "1.0e+20");
  for (double v : {0.1, 1.0 / 3.0, 12345.678901234567, 2.5e-7, 6.02214076e23, 500000.0})
    EXPECT_EQ(std::strtod(format_config_double(v).c_str(), nullptr), v) << format_config_double(v);
}

}  // namespace
