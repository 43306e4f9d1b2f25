// Tasks and model loading end to end (trainer/task.h, trainer/load_model.h): the sft task's
// masked loss against PyTorch on a real prompt/response store, its errors, and load_model:
// a frozen model costs its weights only and holds exactly the trained weights, from an anvil
// checkpoint and from a Hugging Face directory.
#include <gtest/gtest.h>

#include <filesystem>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/allocator.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "models/hf_convert.h"
#include "parallel/pipeline_executor.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"
#include "tests/support/tiny_run.h"
#include "trainer/load_model.h"
#include "trainer/task.h"
#include "trainer/trainer.h"

using namespace anvil;
using namespace anvil::testing;

namespace {
#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

struct Pair {
  std::string prompt, response;
};

// Prompt/response pairs cut from the GPL's paragraphs: the first line asks, the rest answers.
std::vector<Pair> gpl_pairs(const std::string& corpus, size_t count) {
  std::ifstream in(corpus);
  std::vector<Pair> pairs;
  std::string line, prompt, response;
  while (std::getline(in, line) && pairs.size() < count) {
    if (line.find_first_not_of(" \t") == std::string::npos) {
      if (!prompt.empty() && !response.empty()) pairs.push_back({"Q: " + prompt + "\nA:", " " + response});
      prompt.clear();
      response.clear();
    } else if (prompt.empty()) {
      prompt = line;
    } else {
      response += response.empty() ? line : "\n" + line;
    }
  }
  return pairs;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\', out += ch;
    else if (ch == '\n') out += "\\n";
    else out += ch;
  }
  return out + "\"";
}

// An sft store beside the tiny run; returns its path.
std::string write_sft_store(const TinyRun& run, const std::vector<Pair>& pairs) {
  const std::string jsonl = run.dir + "/pairs.jsonl", store = run.dir + "/sft.h5";
  std::ofstream out(jsonl);
  for (const Pair& p : pairs)
    out << "{\"prompt\": " << json_string(p.prompt) << ", \"response\": " << json_string(p.response) << "}\n";
  out.close();
  must_run(std::string(ANVIL_BINARY) + " data prepare --input " + jsonl + " --tokenizer " + run.tokenizer +
           " --output " + store);
  return store;
}
}  // namespace

// The sft task scores the response tokens only: its first micro-batch's targets are ignored
// exactly where the prompts' tokens are, and its documents are packed with their boundaries
// (both worked out here from the tokenizer, independently of the loader); its loss and every
// gradient match PyTorch on the same weights and tokens with a block-diagonal causal mask.
TEST(SftTask, MaskedLossMatchesPyTorch) {
  const TinyRun run = make_tiny_run("task_sft");
  const std::vector<Pair> pairs = gpl_pairs(run.corpus, 60);
  ASSERT_GE(pairs.size(), 20u);
  const std::string store_path = write_sft_store(run, pairs);
  RunConfig config = load_run_config(run.config, {"task.name=sft", "data.train=" + store_path,
                                                  "data.valid_fraction=0", "data.shuffle=false",
                                                  "training.eval_every=0"});
  const Tokenizer tok = Tokenizer::load(run.tokenizer);
  resolve_vocab_size(config, tok.vocab_size());

  // The expected stream: every document is prompt (masked) + response + EOS (both scored).
  const int32_t eos = *tok.token_to_id("<|endoftext|>");
  std::vector<int32_t> stream;
  std::vector<bool> scored;
  for (const Pair& p : pairs) {
    for (int32_t t : tok.encode(p.prompt)) stream.push_back(t), scored.push_back(false);
    for (int32_t t : tok.encode(p.response)) stream.push_back(t), scored.push_back(true);
    stream.push_back(eos), scored.push_back(true);
  }

  std::unique_ptr<Task> task = make_task("sft");
  auto store = std::make_shared<const TokenStore>(TokenStore::open(store_path));
  task->check_data(config, *store);
  TaskEnv env;
  env.config = &config;
  task->build(env);
  Loader loader(store, loader_config(config), Split::Train);
  const Batch batch = loader.next();
  const int64_t B = batch.ids.size(0), T = batch.ids.size(1);
  for (int64_t b = 0; b < B; ++b)  // window b starts at stream position b * T (no shuffle)
    for (int64_t t = 0; t < T; ++t) {
      const size_t at = static_cast<size_t>(b * T + t);
      ASSERT_EQ(batch.ids.data<int32_t>()[b * T + t], stream[at]) << b << "," << t;
      const int32_t target = batch.targets.data<int32_t>()[b * T + t];
      EXPECT_EQ(target, scored[at + 1] ? stream[at + 1] : int32_t(config.training.ignore_index)) << b << "," << t;
    }

  TransformerLM& model = task->model();
  randomize_params(model.params());
  PipelineExecutor exec(task->stage(), nullptr, PipeSchedule::OneFOneB);
  const PipelineStepResult r = exec.step(1, task->prepare({batch}, true));

  const std::string dir = ::testing::TempDir();
  const std::string cfg = dir + "/sft_model.json", in = dir + "/sft_in.anvt", out = dir + "/sft_out.anvt";
  std::ofstream(cfg) << model.config().to_json().dump();
  // sft packs its documents: each pair attends to itself only, at positions restarting at 0.
  ASSERT_TRUE(batch.segment_ids.defined() && batch.position_ids.defined());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 1; t < T; ++t) {
      const size_t at = static_cast<size_t>(b * T + t);
      const bool starts = stream[at - 1] == eos;  // a document starts after an EOS
      EXPECT_EQ(batch.segment_ids.data<int32_t>()[b * T + t] != batch.segment_ids.data<int32_t>()[b * T + t - 1],
                starts) << b << "," << t;
      if (starts) EXPECT_EQ(batch.position_ids.data<int32_t>()[b * T + t], 0) << b << "," << t;
    }
  TensorMap inputs{{"ids", batch.ids},
                   {"targets", batch.targets},
                   {"positions", batch.position_ids},
                   {"segments", batch.segment_ids}};
  for (Param* p : model.params()) inputs[p->name] = p->value;
  write_tensor_file(in, inputs);
  run_torch_script("tests/parity/torch_model.py", cfg + " " + in + " " + out);
  const TensorMap ref = read_tensor_file(out);
  const double ref_loss = ref.at("loss").item();
  EXPECT_LE(std::fabs(r.losses[0] - ref_loss) / std::fabs(ref_loss), 1e-5) << r.losses[0] << " vs " << ref_loss;
  for (Param* p : model.params()) EXPECT_LE(max_rel_diff(p->grad, ref.at("grad." + p->name)), 1e-4) << p->name;
  // The step reports how many response tokens it scored.
  int64_t expected_tokens = 0;
  for (int64_t i = 0; i < B * T; ++i) expected_tokens += scored[static_cast<size_t>(i + 1)];
  EXPECT_EQ(r.weights[0], static_cast<double>(expected_tokens));
  const auto metrics = task->step_metrics();
  ASSERT_EQ(metrics.size(), 1u);
  EXPECT_EQ(metrics[0].first, "response_tokens");
  EXPECT_EQ(metrics[0].second, static_cast<double>(expected_tokens));
}

TEST(SftTask, RunsThroughTheTrainerAndRefusesAStoreWithoutMasks) {
  const TinyRun run = make_tiny_run("task_sft_trainer");
  const std::string store_path = write_sft_store(run, gpl_pairs(run.corpus, 60));
  Trainer t(load_run_config(run.config, {"task.name=sft", "data.train=" + store_path, "training.steps=3", "schedule.warmup_steps=1"}),
            TrainerMode::Quiet);
  t.train();
  ASSERT_EQ(t.history().size(), 3u);
  EXPECT_TRUE(std::isfinite(t.history().back().loss));
  ASSERT_EQ(t.history().back().task_metrics.size(), 1u);
  EXPECT_GT(t.history().back().task_metrics[0].second, 0.0);

  // The plain-text store has no loss mask: sft says what to do.
  EXPECT_HAS(error_of([&] { Trainer bad(load_run_config(run.config, {"task.name=sft"}), TrainerMode::Quiet); }),
             "has no loss mask");
  EXPECT_HAS(error_of([&] { load_run_config(run.config, {"task.name=distil"}); }), "task.name");
}

// load_model: frozen (no gradient, no master), exactly the trained weights, and its only
// memory is its weights and RoPE tables — the demo model's architecture here.
TEST(LoadModel, AFrozenModelCostsItsWeightsOnly) {
  const TinyRun run = make_tiny_run("load_model");
  const std::vector<std::string> demo_architecture = {
      "model.hidden_size=256",         "model.num_hidden_layers=4",   "model.num_attention_heads=4",
      "model.num_key_value_heads=2",   "model.intermediate_size=704", "model.max_position_embeddings=256",
      "model.tie_word_embeddings=true", "training.steps=2",           "training.micro_batch_size=2",
      "schedule.warmup_steps=1"};
  Trainer trainer(load_run_config(run.config, demo_architecture), TrainerMode::Quiet);
  trainer.train();  // ends with a checkpoint

  Allocator& memory = cpu_allocator();
  const size_t before = memory.stats().current_bytes;
  memory.reset_peak();
  LoadedModel loaded = load_model(run.dir + "/run");
  const size_t added = memory.stats().current_bytes - before, peak = memory.stats().peak_bytes - before;
  const MemoryTable table = loaded.model->memory_table(1, 1);
  EXPECT_EQ(table.grad_bytes, 0u);
  EXPECT_EQ(added, table.param_bytes + table.buffer_bytes);
  size_t weights = 0, largest = 0;
  for (Param* p : loaded.model->params()) {
    largest = std::max(largest, p->value.nbytes());
    weights += p->value.nbytes();
    EXPECT_FALSE(p->trainable) << p->name;
    EXPECT_FALSE(p->grad.defined()) << p->name;
    EXPECT_FALSE(p->master.defined()) << p->name;
    EXPECT_EQ(max_abs_diff(p->value, trainer.model().param(p->name).value), 0.0) << p->name;
  }
  EXPECT_EQ(table.param_bytes, weights);
  // Built frozen, so not even a moment holds gradient buffers: the peak is the weights, the RoPE
  // tables and at most one tensor being read (a gradient buffer per param would double it).
  EXPECT_LE(peak, table.param_bytes + table.buffer_bytes + largest) << "peak " << peak << " bytes";
  EXPECT_EQ(loaded.step, 2);
  EXPECT_EQ(loaded.config.model.to_json(), trainer.config().model.to_json());

  // A Hugging Face export of the same weights loads to the same model.
  const std::string hf = run.dir + "/hf";
  const Tokenizer tok = Tokenizer::load(run.tokenizer);
  save_hf(trainer.model(), &tok, hf);
  LoadedModel from_hf = load_model(hf);
  EXPECT_EQ(from_hf.step, 0);
  EXPECT_EQ(from_hf.config.tokenizer.path, std::filesystem::absolute(hf + "/tokenizer.json").string());
  for (Param* p : from_hf.model->params()) {
    EXPECT_FALSE(p->grad.defined()) << p->name;
    EXPECT_EQ(max_abs_diff(p->value, trainer.model().param(p->name).value), 0.0) << p->name;
  }
  // model.init_from takes an anvil run directory too: its architecture and weights, not its
  // optimizer state or step.
  const RunConfig from = load_run_config(
      run.config, {"model={init_from: " + run.dir + "/run}", "run.out_dir=" + run.dir + "/from", "training.steps=1",
                   "schedule.warmup_steps=0"});
  EXPECT_EQ(from.model.init_from, loaded.source);
  EXPECT_EQ(from.model.to_json(), trainer.config().model.to_json());
  Trainer fine_tune(from, TrainerMode::Quiet);
  EXPECT_EQ(fine_tune.step(), 0);
  for (Param* p : fine_tune.model().params())
    EXPECT_EQ(max_abs_diff(p->value, trainer.model().param(p->name).value), 0.0) << p->name;
  EXPECT_HAS(error_of([&] { load_run_config(run.config, {"model={init_from: " + run.dir + "}"}); }),
             "is neither a Hugging Face directory");
  EXPECT_HAS(error_of([&] { load_model(run.dir + "/nothing_here"); }), "no such checkpoint or model directory");
  EXPECT_HAS(error_of([&] { load_model(run.dir); }), "no complete checkpoint");
}
