// `anvil convert` both ways and `model.init_from`: train -> export to a Hugging Face directory ->
// convert back to an anvil checkpoint -> generate gives the same greedy text as the trained run;
// a run started with model.init_from holds exactly the directory's weights.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/safetensors.h"
#include "eval/generate.h"
#include "models/hf_convert.h"
#include "tests/support/reference.h"
#include "tests/support/tiny_run.h"
#include "trainer/checkpoint.h"
#include "trainer/trainer.h"

using namespace anvil;
using namespace anvil::testing;
namespace fs = std::filesystem;

#define EXPECT_HAS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << "missing: " << (needle) << "\nin: " << (haystack)

namespace {
const std::string kAnvil = ANVIL_BINARY;
}  // namespace

TEST(Convert, TrainExportImportGenerate) {
  const auto run = make_tiny_run("convert_chain");
  must_run(kAnvil + " train " + run.config + " --set training.steps=4 --set training.eval_every=0");
  const std::string hf = run.dir + "/hf", ckpt = run.dir + "/ckpt";
  std::string out = must_run(kAnvil + " convert --from " + run.dir + "/run --to hf " + hf);
  EXPECT_HAS(out, "wrote " + hf);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"}) EXPECT_TRUE(fs::exists(hf + "/" + f)) << f;

  // The export holds the checkpoint's params exactly.
  const std::string step_dir = latest_checkpoint(run.dir + "/run/checkpoints");
  ASSERT_FALSE(step_dir.empty());
  TransformerLM from_ckpt(read_hf_config(hf));
  load_checkpoint(step_dir, from_ckpt.params(), nullptr);
  TransformerLM from_hf(read_hf_config(hf));
  load_hf_weights(from_hf, SafetensorsIndex::open(hf));
  for (Param* p : from_ckpt.params()) EXPECT_EQ(max_abs_diff(from_hf.param(p->name).value, p->value), 0.0) << p->name;

  out = must_run(kAnvil + " convert --from hf " + hf + " --to " + ckpt);
  EXPECT_TRUE(fs::exists(ckpt + "/tokenizer.json"));
  const std::string prompt = " --prompt 'The GNU General' --max-tokens 12 --temperature 0";
  const std::string original = must_run(kAnvil + " generate --checkpoint " + run.dir + "/run" + prompt);
  const std::string converted = must_run(kAnvil + " generate --checkpoint " + ckpt + prompt);
  EXPECT_EQ(converted, original);
  EXPECT_EQ(original.rfind("The GNU General", 0), 0u) << original;

  // The converted checkpoint's config has no data: training from it says what to do.
  out.clear();
  const CheckpointMeta meta = read_checkpoint_meta(latest_checkpoint(ckpt));
  EXPECT_HAS(meta.run_config_yaml, "train: none");
  EXPECT_EQ(meta.optimizer_name, "");
  const RunConfig cfg = parse_run_config(meta.run_config_yaml, "stored", ckpt);
  EXPECT_HAS(error_of([&] { Trainer t(cfg, TrainerMode::Quiet); }), "data.train is none");
  std::string eval_err;
  EXPECT_NE(run_command(kAnvil + " eval --checkpoint " + ckpt, eval_err), 0);
  EXPECT_HAS(eval_err, "evaluation needs data");

  // A non-empty destination is refused; a bad form is explained.
  std::string err;
  EXPECT_NE(run_command(kAnvil + " convert --from hf " + hf + " --to " + ckpt, err), 0);
  EXPECT_HAS(err, "exists and is not empty");
  EXPECT_NE(run_command(kAnvil + " convert --from " + hf + " --to " + ckpt + "2", err), 0);
  EXPECT_HAS(err, "--from hf HF_DIR --to CHECKPOINT_DIR");
}

TEST(Convert, InitFromLoadsTheDirectorysWeights) {
  const auto run = make_tiny_run("convert_init");
  // A Hugging Face directory with a model of the tiny run's architecture and the run's tokenizer.
  RunConfig base = load_run_config(run.config);
  resolve_vocab_size(base, Tokenizer::load(run.tokenizer).vocab_size());
  TransformerLM source(base.model);
  source.init_weights(77);
  randomize_params(source.params());
  const Tokenizer tok = Tokenizer::load(run.tokenizer);
  const std::string hf = run.dir + "/hf";
  save_hf(source, &tok, hf);

  // model.init_from alone defines the architecture, and the tokenizer when tokenizer.path is absent.
  const std::string yaml = "run: {name: init, out_dir: " + run.dir + "/init_run}\nmodel: {init_from: hf}\n"
                           "data: {train: gpl.h5, seq_len: 32}\ntraining: {steps: 2, micro_batch_size: 2}\n";
  RunConfig cfg = parse_run_config(yaml, "init.yaml", run.dir);
  EXPECT_EQ(cfg.model.init_from, hf);
  EXPECT_EQ(cfg.tokenizer.path, hf + "/tokenizer.json");
  EXPECT_EQ(cfg.model.to_json(), source.config().to_json());
  {
    Trainer trainer(cfg, TrainerMode::Quiet);
    for (Param* p : source.params())
      EXPECT_EQ(max_abs_diff(trainer.model().param(p->name).value, p->value), 0.0) << p->name;
  }
  // The resolved config round-trips (init_from is a setting, written out).
  const RunConfig again = parse_run_config(to_yaml(cfg), "resolved", run.dir);
  EXPECT_TRUE(config_differences(cfg, again).empty());
  EXPECT_EQ(again.model.init_from, hf);

  // Fields next to init_from override the file; weights that no longer fit are an error naming the tensor.
  RunConfig wide = parse_run_config(yaml, "init.yaml", run.dir, {"model.intermediate_size=80"});
  EXPECT_HAS(error_of([&] { Trainer t(wide, TrainerMode::Quiet); }), "tensor 'model.layers.0.mlp.gate_proj.weight' has shape");

  // Mistakes name the key.
  EXPECT_HAS(error_of([&] { parse_run_config(yaml, "init.yaml", run.dir, {"model.config=hf/config.json"}); }),
             "model.init_from: and model.config both give the architecture");
  EXPECT_HAS(error_of([&] { parse_run_config(yaml, "init.yaml", run.dir, {"model.init_from=" + run.dir + "/nope"}); }),
             "model.init_from: file not found");
  EXPECT_HAS(error_of([&] { parse_run_config(yaml, "init.yaml", run.dir, {"model.init_from=" + run.dir}); }),
             "cannot open " + run.dir + "/config.json");
  fs::remove(hf + "/tokenizer.json");
  EXPECT_HAS(error_of([&] { parse_run_config(yaml, "init.yaml", run.dir); }),
             "tokenizer.path: is required but missing — model.init_from has no tokenizer.json");
  nlohmann::json j;
  std::ifstream(hf + "/config.json") >> j;
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  std::ofstream(hf + "/config.json") << j.dump();
  EXPECT_HAS(error_of([&] { parse_run_config(yaml, "init.yaml", run.dir, {"tokenizer.path=" + run.tokenizer}); }),
             "unsupported field value rope_scaling");
}

// The variants' own fields survive `anvil convert --from hf` (the stored run config is YAML):
// a Mistral with a sliding window and Llama-3 rope scaling generates, from the converted
// checkpoint, exactly what the same weights generate in process.
TEST(Convert, MistralWithWindowAndRopeScalingConvertsAndGenerates) {
  const auto run = make_tiny_run("convert_mistral");
  const Tokenizer tok = Tokenizer::load(run.tokenizer);
  ModelConfig c = ModelConfig::mistral();
  c.vocab_size = tok.vocab_size();
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.intermediate_size = 64;
  c.max_position_embeddings = 64;
  c.sliding_window = 3;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 32;
  TransformerLM source(c);
  source.init_weights(5);
  randomize_params(source.params());
  const std::string hf = run.dir + "/hf", ckpt = run.dir + "/ckpt";
  save_hf(source, &tok, hf);
  must_run(kAnvil + " convert --from hf " + hf + " --to " + ckpt);
  const CheckpointMeta meta = read_checkpoint_meta(latest_checkpoint(ckpt));
  const RunConfig cfg = parse_run_config(meta.run_config_yaml, "stored", ckpt);
  EXPECT_EQ(cfg.model.model_type, "mistral");
  EXPECT_EQ(cfg.model.sliding_window, 3);
  EXPECT_TRUE(cfg.model.rope_scaling == c.rope_scaling) << meta.run_config_yaml;

  const std::string prompt = "The GNU General";
  const auto ids = tok.encode(prompt);
  const auto ours = generate(source, {ids}, 16, SamplingConfig::greedy(), tok.token_to_id("<|endoftext|>"));
  const std::string printed = must_run(kAnvil + " generate --checkpoint " + ckpt + " --prompt '" + prompt +
                                       "' --max-tokens 16 --temperature 0");
  EXPECT_EQ(printed, prompt + tok.decode(ours[0]) + "\n");
}

