// anvil: the one command-line tool. Subcommands: train, data prepare, tokenizer
// train, generate, eval. Every failure prints one line a user can act on and
// exits non-zero; nothing here aborts on bad input.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "data/prepare.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "parallel/mpi_communicator.h"
#include "trainer/checkpoint.h"
#include "trainer/trainer.h"

using namespace anvil;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ANVIL_CHECK(in.good(), "cannot read ", path, " — check the path and permissions");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The run config stored in a checkpoint, pointed back at that checkpoint.
RunConfig config_from_checkpoint(const std::string& path, const std::vector<std::string>& overrides) {
  std::string dir = path;
  if (std::ifstream(dir + "/" + kCheckpointFile).good() == false) {
    // A run directory or a checkpoint root: take the newest checkpoint under it.
    std::string found = latest_checkpoint(dir + "/checkpoints");
    if (found.empty()) found = latest_checkpoint(dir);
    ANVIL_CHECK(!found.empty(), "no complete checkpoint in ", path,
                " — pass a checkpoint directory (…/checkpoints/step_N) or a run directory");
    dir = found;
  }
  const CheckpointMeta meta = read_checkpoint_meta(dir);
  std::vector<std::string> all = overrides;
  all.push_back("checkpoint.resume=" + dir);
  return parse_run_config(meta.run_config_yaml, dir + "/" + kCheckpointFile, dir, all);
}

struct TrainArgs {
  std::string config;
  std::vector<std::string> overrides;
};

struct PrepareArgs {
  std::vector<std::string> inputs;
  std::string tokenizer, output, format = "auto", split = "blank_line", eos = "<|endoftext|>";
};

struct TokenizerArgs {
  std::vector<std::string> inputs;
  std::string output, split = "blank_line";
  int vocab_size = 8192;
  int64_t min_frequency = 2;
  std::vector<std::string> specials{"<|endoftext|>"};
};

struct GenerateArgs {
  std::string checkpoint, prompt;
  int max_tokens = 64;
  double temperature = 0.8, top_p = 1.0;
  int64_t top_k = 40;
  uint64_t seed = 0;
};

struct EvalArgs {
  std::string checkpoint;
  int64_t batches = 50;
  std::vector<std::string> overrides;
};

// Under a launcher, errors every rank meets alike before any collective (the config,
// the launch checks) are printed once, by rank 0; any later error is printed by the
// rank that met it and aborts the job, so no peer waits forever in a collective.
int run_train(const TrainArgs& a) {
  const LaunchInfo launch = launch_info();
  RunConfig config;
  try {
    config = load_run_config(a.config, a.overrides);
    check_parallel_launch(config.parallel, launch.size);
  } catch (const Error& e) {
    if (launch.rank == 0) std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  std::shared_ptr<Communicator> world;
  if (launch.size > 1) world = MpiCommunicator::world();
  try {
    Trainer trainer(config, TrainerMode::Train, world);
    const double unigram = trainer.unigram_entropy();
    if (trainer.is_main_rank()) std::printf("unigram entropy of the training tokens: %.4f nats/token\n", unigram);
    trainer.train();
    const double val = trainer.last_validation_loss();
    if (!std::isnan(val) && trainer.is_main_rank())
      std::printf("final validation loss %.4f nats/token (perplexity %.2f) vs unigram entropy %.4f: %.4f below\n",
                  val, std::exp(val), unigram, unigram - val);
  } catch (const std::exception& e) {
    if (!world) throw;
    std::fprintf(stderr, "error (rank %d of %d): %s\n", world->rank(), world->size(), e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return 0;
}

int run_prepare(const PrepareArgs& a) {
  const Tokenizer tok = Tokenizer::load(a.tokenizer);
  PrepareOptions o;
  o.inputs = a.inputs;
  o.format = parse_input_format(a.format);
  o.text_split = parse_text_split(a.split);
  const auto eos = tok.token_to_id(a.eos);
  ANVIL_CHECK(eos.has_value(), "--eos '", a.eos, "' is not a token of ", a.tokenizer,
              " — pass one of its special tokens (train the tokenizer with --special)");
  o.eos_id = *eos;
  o.tokenizer_hash = tok.hash_hex();
  o.vocab_size = tok.vocab_size();
  o.output = a.output;
  const auto t0 = std::chrono::steady_clock::now();
  const PrepareStats s = prepare_dataset(o, [&](const std::string& text) { return tok.encode(text); });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s: %ld documents, %ld tokens (%ld masked), %.1f MB read, %ld empty skipped, %.1f s\n",
              a.output.c_str(), long(s.documents), long(s.tokens), long(s.masked_tokens), s.bytes_read / 1e6,
              long(s.skipped), secs);
  return 0;
}

int run_tokenizer_train(const TokenizerArgs& a) {
  std::vector<std::string> texts;
  for (const std::string& path : a.inputs) {
    const std::string text = read_file(path);
    if (a.split == "file") { texts.push_back(text); continue; }
    ANVIL_CHECK(a.split == "line" || a.split == "blank_line", "--split '", a.split,
                "' is unknown — use blank_line, line or file");
    // Documents train independently, as in tokenizers' train_from_iterator.
    std::istringstream lines(text);
    std::string line, doc;
    while (std::getline(lines, line)) {
      const bool blank = line.find_first_not_of(" \t\r") == std::string::npos;
      if (a.split == "line") { if (!blank) texts.push_back(line); continue; }
      if (blank) { if (!doc.empty()) texts.push_back(doc); doc.clear(); }
      else doc += doc.empty() ? line : "\n" + line;
    }
    if (!doc.empty()) texts.push_back(doc);
  }
  const auto t0 = std::chrono::steady_clock::now();
  const Tokenizer tok = Tokenizer::train(texts, a.vocab_size, a.min_frequency, a.specials);
  tok.save(a.output);
  std::printf("wrote %s: %d tokens (%d merges) from %zu documents in %.2f s\n", a.output.c_str(), tok.vocab_size(),
              tok.num_merges(), texts.size(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

int run_generate(const GenerateArgs& a) {
  RunConfig cfg = config_from_checkpoint(a.checkpoint, {});
  cfg.training.sample_temperature = a.temperature;
  cfg.training.sample_top_k = a.top_k;
  cfg.training.sample_top_p = a.top_p;
  cfg.run.seed = static_cast<int64_t>(a.seed);
  Trainer trainer(cfg, TrainerMode::Inference);
  std::printf("%s\n", trainer.sample(a.prompt, a.max_tokens).c_str());
  return 0;
}

int run_eval(const EvalArgs& a) {
  Trainer trainer(config_from_checkpoint(a.checkpoint, a.overrides), TrainerMode::Inference);
  const double loss = trainer.evaluate(a.batches);
  std::printf("step %ld: validation loss %.4f, perplexity %.3f (unigram entropy %.4f)\n", long(trainer.step()), loss,
              std::exp(loss), trainer.unigram_entropy());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"anvil: train and fine-tune transformer language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "anvil 0.1");

  TrainArgs train;
  auto* train_cmd = app.add_subcommand("train", "Train a model from a YAML run config");
  train_cmd->add_option("config", train.config, "Run config (YAML)")->required()->check(CLI::ExistingFile);
  train_cmd->add_option("--set", train.overrides, "Override a config field: section.key=value (repeatable)");

  auto* data_cmd = app.add_subcommand("data", "Datasets");
  data_cmd->require_subcommand(1);
  PrepareArgs prep;
  auto* prep_cmd = data_cmd->add_subcommand("prepare", "Tokenize text / JSONL into an HDF5 token store");
  prep_cmd->add_option("--input", prep.inputs, "Input files (.txt, .jsonl)")->required()->check(CLI::ExistingFile);
  prep_cmd->add_option("--tokenizer", prep.tokenizer, "tokenizer.json")->required()->check(CLI::ExistingFile);
  prep_cmd->add_option("--output", prep.output, "Output store (.h5)")->required();
  prep_cmd->add_option("--format", prep.format, "auto | text | jsonl")->capture_default_str();
  prep_cmd->add_option("--split", prep.split, "How text splits into documents: blank_line | line | file")
      ->capture_default_str();
  prep_cmd->add_option("--eos", prep.eos, "Token appended after every document")->capture_default_str();

  auto* tok_cmd = app.add_subcommand("tokenizer", "Tokenizers");
  tok_cmd->require_subcommand(1);
  TokenizerArgs tok;
  auto* tok_train = tok_cmd->add_subcommand("train", "Train a byte-level BPE tokenizer (Hugging Face tokenizer.json)");
  tok_train->add_option("--input", tok.inputs, "Text files")->required()->check(CLI::ExistingFile);
  tok_train->add_option("--output", tok.output, "tokenizer.json to write")->required();
  tok_train->add_option("--vocab-size", tok.vocab_size, "Vocabulary size")->capture_default_str()->check(
      CLI::Range(257, 1 << 20));
  tok_train->add_option("--min-frequency", tok.min_frequency, "Least count of a merged pair")->capture_default_str();
  tok_train->add_option("--special", tok.specials, "Special tokens (repeatable)")->capture_default_str();
  tok_train->add_option("--split", tok.split, "Document boundaries: blank_line | line | file")->capture_default_str();

  GenerateArgs gen;
  auto* gen_cmd = app.add_subcommand("generate", "Generate text from a checkpoint (KV-cache decoding)");
  gen_cmd->add_option("--checkpoint", gen.checkpoint, "Checkpoint or run directory")->required();
  gen_cmd->add_option("--prompt", gen.prompt, "Prompt text")->capture_default_str();
  gen_cmd->add_option("--max-tokens", gen.max_tokens, "Tokens to generate")->capture_default_str()->check(
      CLI::PositiveNumber);
  gen_cmd->add_option("--temperature", gen.temperature, "0 = greedy")->capture_default_str()->check(
      CLI::NonNegativeNumber);
  gen_cmd->add_option("--top-k", gen.top_k, "0 = off")->capture_default_str()->check(CLI::NonNegativeNumber);
  gen_cmd->add_option("--top-p", gen.top_p, "1 = off")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  gen_cmd->add_option("--seed", gen.seed, "Sampling seed")->capture_default_str();

  EvalArgs ev;
  auto* eval_cmd = app.add_subcommand("eval", "Validation loss and perplexity of a checkpoint");
  eval_cmd->add_option("--checkpoint", ev.checkpoint, "Checkpoint or run directory")->required();
  eval_cmd->add_option("--batches", ev.batches, "Validation batches")->capture_default_str()->check(
      CLI::PositiveNumber);
  eval_cmd->add_option("--set", ev.overrides, "Override a config field, e.g. data.train=other.h5");

  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands({})) known = known || sub->get_name() == argv[1];
    if (!known) {
      std::fprintf(stderr, "error: unknown command '%s' — use one of train, data, tokenizer, generate, eval "
                   "(anvil --help)\n", argv[1]);
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*train_cmd) return run_train(train);
    if (*prep_cmd) return run_prepare(prep);
    if (*tok_train) return run_tokenizer_train(tok);
    if (*gen_cmd) return run_generate(gen);
    if (*eval_cmd) return run_eval(ev);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
