// anvil: the one command-line tool. Subcommands: train, data prepare, data generate, tokenizer
// train, generate (--draft: speculative; --medusa: Medusa heads), eval (eval spec:
// apps/spec_commands.cpp; eval medusa: apps/medusa_commands.cpp), convert.
// Every failure prints one line a user can act on and exits non-zero; nothing here aborts on
// bad input.
#include <CLI/CLI.hpp>

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/medusa_commands.h"
#include "apps/router_commands.h"
#include "apps/spec_commands.h"
#include "data/prepare.h"
#include "data/quant_checkpoint.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "eval/generate_data.h"
#include "eval/perplexity.h"
#include "eval/self_speculative.h"
#include "eval/spec_eval.h"
#include "models/hf_convert.h"
#include "models/hf_quant.h"
#include "models/layout_checks.h"
#include "parallel/mpi_communicator.h"
#include "parallel/timed_communicator.h"
#include "trainer/exit_codes.h"
#include "trainer/plot.h"
#include "trainer/checkpoint.h"
#include "trainer/load_model.h"
#include "trainer/peft_adapter.h"
#include "trainer/quant_export.h"
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

struct TrainArgs {
  std::string config;
  std::vector<std::string> overrides;
};

struct PrepareArgs {
  std::vector<std::string> inputs;
  std::string tokenizer, output, format = "auto", split = "blank_line", eos = "<|endoftext|>";
};

struct DataGenerateArgs {
  std::string checkpoint, input, output, documents = "all";
  int64_t prompt_tokens = 64, batch = 16;
  int max_tokens = 128;
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;
  uint64_t seed = 0;
  bool force = false;
  std::vector<std::string> overrides;
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
  std::string draft;  // a drafter: speculative decoding with `gamma` draft tokens per target forward
  int gamma = 4;
  int tree_width = 1;  // > 1: a tree of this width, gamma deep, verified in one target forward
  int64_t early_exit = 0;  // with early_exit_given: self-speculation, the first early_exit layers draft `gamma` tokens
  bool early_exit_given = false;
  MedusaFlags medusa;  // medusa.run: decode with a Medusa run's heads (its base replaces --checkpoint)
  std::string routers;  // a router run: its routers on the backbone (--checkpoint, else the run's init_from)
  int max_tokens = 64;
  double temperature = 0.8, top_p = 1.0;
  int64_t top_k = 40;
  uint64_t seed = 0;
  std::vector<std::string> overrides;
};

struct ConvertArgs {
  std::vector<std::string> from, to;
  std::string tokenizer;
  bool merge = false;  // a LoRA run: adapters merged (--to hf: a dense model; --to gptq: QA-LoRA into the zeros)
};

struct EvalArgs {
  std::string checkpoint;
  std::string routers;  // a router run: perplexity and capacity of its routers on the backbone
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
    // The model's split too (heads, layers), so a layout it cannot take is one message, not one per rank.
    validate_layout(grid_dims(config.parallel), config.model);
  } catch (const Error& e) {
    if (launch.rank == 0) {
      std::fprintf(stderr, "error: %s\n", e.what());
      std::fflush(stderr);
    }
    // The others leave only after rank 0 has printed: mpirun kills the job at the first non-zero exit.
    if (launch.size > 1) MpiCommunicator::world()->barrier();
    return 1;
  }
  std::shared_ptr<Communicator> world;
  // Timed, so every step reports each rank's time blocked in communication.
  if (launch.size > 1) world = std::make_shared<TimedCommunicator>(MpiCommunicator::world());
  int code = kExitOk;
  try {
    Trainer trainer(config, TrainerMode::Train, world);
    // The unigram bar applies to a cross-entropy in nats/token, not to a divergence (task distill).
    const bool cross_entropy = trainer.loss_is_cross_entropy();
    const double unigram = cross_entropy ? trainer.unigram_entropy() : std::nan("");
    if (trainer.is_main_rank() && cross_entropy)
      std::printf("unigram entropy of the training tokens: %.4f nats/token\n", unigram);
    trainer.train();
    switch (trainer.stop_reason()) {
      case StopReason::Preempted:  // every rank agreed and the checkpoint is complete
        if (trainer.is_main_rank()) std::printf("%s (exit code %d)\n", trainer.stop_message().c_str(), kExitPreempted);
        code = kExitPreempted;
        break;
      case StopReason::NumericsGuard:  // every rank saw the same reduced values
        if (trainer.is_main_rank()) std::fprintf(stderr, "error: %s\n", trainer.stop_message().c_str());
        code = kExitNumerics;
        break;
      case StopReason::Finished: {
        const double val = trainer.last_validation_loss();
        if (!std::isnan(val) && trainer.is_main_rank() && !cross_entropy)
          std::printf("final validation loss %.4f (%s)\n", val,
                      config.task.name == "distill" ? config.distill.loss.c_str() : "the task's objective");
        else if (!std::isnan(val) && trainer.is_main_rank())
          std::printf("final validation loss %.4f nats/token (perplexity %.2f) vs unigram entropy %.4f: %.4f below\n",
                      val, std::exp(val), unigram, unigram - val);
      }
    }
    std::fflush(stdout);
    std::fflush(stderr);
  } catch (const std::exception& e) {
    if (!world) throw;
    std::fprintf(stderr, "error (rank %d of %d): %s\n", world->rank(), world->size(), e.what());
    std::fflush(stderr);
    abort_job(1);
  }
  return code;
}

// `anvil topology`: where each rank landed, as the launcher and MPI see it. Without a
// launcher (or with one rank) it prints this process's view; with several ranks it starts
// MPI (through the file rendezvous where needed), so it also proves the ranks can talk.
int run_topology(bool local_only) {
  const LaunchInfo launch = launch_info();
  const char* omp = std::getenv("OMP_NUM_THREADS");
  const std::string mine = describe_launch(launch) + " | pid " + std::to_string(getpid()) + " | OMP_NUM_THREADS " +
                           (omp ? omp : "unset");
  if (launch.size <= 1 || local_only) {
    std::printf("%s\n", mine.c_str());
    return 0;
  }
  auto world = MpiCommunicator::world();
  ANVIL_CHECK(world->size() == launch.size, "the launcher says ", launch.size, " ranks but MPI joined ",
              world->size(), " — under srun use --mpi=pmix, or --mpi=none with the file rendezvous (launch/README.md)");
  constexpr int64_t kLine = 256;
  Tensor line = Tensor::zeros({kLine}, DType::U8);
  std::memcpy(line.raw_data(), mine.data(), std::min<size_t>(mine.size(), kLine - 1));
  Tensor all = Tensor::zeros({kLine * world->size()}, DType::U8);
  world->all_gather(line, all);
  if (world->rank() == 0) {
    std::printf("world: %d ranks, MPI rank = launcher rank on every one\n", world->size());
    for (int r = 0; r < world->size(); ++r)
      std::printf("  %s\n", reinterpret_cast<const char*>(all.data<uint8_t>()) + r * kLine);
  }
  std::fflush(stdout);
  world->barrier();
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

// `anvil data generate`: the model's continuations of corpus prompts as a token store.
int run_data_generate(const DataGenerateArgs& a) {
  GenerateDataOptions o;
  o.input = a.input;
  o.output = a.output;
  o.prompt_tokens = a.prompt_tokens;
  o.max_tokens = a.max_tokens;
  o.batch = a.batch;
  if (a.documents != "all") {
    size_t used = 0;
    try {
      o.documents = std::stoll(a.documents, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    ANVIL_CHECK(used == a.documents.size() && o.documents >= 1, "--documents '", a.documents,
                "' is not a positive count — give a number of prompts, or `all`");
  }
  o.sampling.temperature = a.temperature;
  o.sampling.top_k = a.top_k;
  o.sampling.top_p = a.top_p;
  o.sampling.seed = a.seed;
  o.force = a.force;
  LoadModelOptions options;
  options.overrides = a.overrides;
  const LoadedModel loaded = load_model(a.checkpoint, options);
  o.checkpoint = loaded.source;
  if (loaded.config.run.threads > 0) omp_set_num_threads(static_cast<int>(loaded.config.run.threads));
  std::optional<std::string> tokenizer_hash;
  if (!loaded.config.tokenizer.path.empty() && std::filesystem::is_regular_file(loaded.config.tokenizer.path))
    tokenizer_hash = Tokenizer::load(loaded.config.tokenizer.path).hash_hex();
  const GenerateDataStats s = generate_data(
      *loaded.model, o, tokenizer_hash, [](int64_t done, int64_t total, const GenerateDataStats& st) {
        std::fprintf(stderr, "data generate: %ld/%ld prompts, %ld tokens generated, %.1f tokens/s\n", long(done),
                     long(total), long(st.generated_tokens), st.generated_tokens / std::max(st.seconds, 1e-9));
      });
  std::printf("wrote %s: %ld documents, %ld generated tokens (%ld ended by the model), %ld documents shorter than "
              "--prompt-tokens + 1 skipped, %.1f s\n",
              a.output.c_str(), long(s.documents), long(s.generated_tokens), long(s.ended_by_model),
              long(s.skipped_short), s.seconds);
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
  const bool medusa = !a.medusa.run.empty();
  const bool routed = !a.routers.empty();
  ANVIL_CHECK(!(medusa && routed), "generate: --medusa and --routers cannot be combined — pass one");
  ANVIL_CHECK(routed || medusa != !a.checkpoint.empty(), medusa ? "generate: pass --medusa RUN alone, without "
              "--checkpoint (the Medusa run names its base)" : "generate: --checkpoint is required (or --medusa RUN, "
              "or --routers RUN)");
  ANVIL_CHECK(!medusa || (a.draft.empty() && !a.early_exit_given), "generate: --medusa, --draft and --early-exit are "
              "ways to speculate — pass one");
  LoadModelOptions options;
  options.overrides = a.overrides;
  const LoadedModel loaded = medusa   ? load_medusa_run(a.medusa, a.overrides)
                             : routed ? load_router_flags(a.routers, a.checkpoint, a.overrides)
                                      : load_model(a.checkpoint, options);
  const RunConfig& cfg = loaded.config;
  if (cfg.run.threads > 0) omp_set_num_threads(static_cast<int>(cfg.run.threads));
  ANVIL_CHECK(!cfg.tokenizer.path.empty(), routed ? a.routers : a.checkpoint, " has no tokenizer.json — generation needs one to encode "
              "the prompt; put the model's tokenizer.json beside its config.json");
  const Tokenizer tokenizer = Tokenizer::load(cfg.tokenizer.path);
  std::shared_ptr<const TokenStore> store;
  if (cfg.data.train != "none") store = std::make_shared<const TokenStore>(TokenStore::open(cfg.data.train));
  SamplingConfig s;
  s.temperature = a.temperature;
  s.top_k = a.top_k;
  s.top_p = a.top_p;
  s.seed = static_cast<uint64_t>(a.seed) + static_cast<uint64_t>(loaded.step);
  const int32_t eos = end_of_document_id(store.get(), tokenizer);
  SpeculativeStats stats;
  if (medusa) {
    const MedusaTree tree = medusa_tree_of(a.medusa, *loaded.medusa);
    std::printf("%s\n", medusa_complete_text(*loaded.model, *loaded.medusa, tree, tokenizer, a.prompt, a.max_tokens, s,
                                             medusa_acceptance_of(a.medusa, s.temperature), eos, &stats).c_str());
    std::fflush(stdout);
    std::fprintf(stderr, "%s\n", stats.summary().c_str());
    return 0;
  }
  if (a.early_exit_given) {
    ANVIL_CHECK(a.draft.empty() && a.tree_width == 1, "generate: --early-exit drafts with the model itself — pass it "
                "without --draft and --tree-width");
    std::printf("%s\n", self_speculative_complete_text(*loaded.model, a.early_exit, tokenizer, a.prompt, a.max_tokens,
                                                       s, a.gamma, eos, &stats).c_str());
    std::fflush(stdout);
    std::fprintf(stderr, "early exit %ld: %s\n", long(a.early_exit), stats.summary().c_str());
    return 0;
  }
  if (a.draft.empty()) {
    std::printf("%s\n", complete_text(*loaded.model, tokenizer, a.prompt, a.max_tokens, s, eos).c_str());
    return 0;
  }
  LoadedDrafter drafter = load_drafter(a.draft, loaded);
  ANVIL_CHECK(a.tree_width >= 1, "generate: --tree-width ", a.tree_width, " must be >= 1 (1: a chain of --gamma drafts)");
  if (a.tree_width > 1)
    std::printf("%s\n", tree_complete_text(*loaded.model, drafter.tree_factory(), tokenizer, a.prompt, a.max_tokens, s,
                                            a.tree_width, a.gamma, eos, &stats).c_str());
  else
    std::printf("%s\n", speculative_complete_text(*loaded.model, drafter.factory(), tokenizer, a.prompt, a.max_tokens,
                                                   s, a.gamma, eos, &stats).c_str());
  std::fflush(stdout);
  std::fprintf(stderr, "%s\n", stats.summary().c_str());
  return 0;
}

int run_eval(const EvalArgs& a) {
  LoadModelOptions options;
  options.overrides = a.overrides;
  const LoadedModel loaded = load_model(a.checkpoint, options);
  const RunConfig& cfg = loaded.config;
  if (cfg.run.threads > 0) omp_set_num_threads(static_cast<int>(cfg.run.threads));
  ANVIL_CHECK(cfg.data.train != "none", "evaluation needs data: ", a.checkpoint, " names no token store (data.train "
              "is none) — pass --set data.train=path/to/tokens.h5");
  ANVIL_CHECK(cfg.data.valid_fraction > 0, "evaluation needs a validation split — set data.valid_fraction > 0");
  auto store = std::make_shared<const TokenStore>(TokenStore::open(cfg.data.train));
  store->check_tokenizer(Tokenizer::load(cfg.tokenizer.path).hash_hex());
  Loader valid(store, loader_config(cfg), Split::Valid);
  const double loss = mean_loss(*loaded.model, valid, a.batches, static_cast<int>(cfg.training.ignore_index));
  const Loader train(store, loader_config(cfg), Split::Train);
  std::printf("step %ld: validation loss %.4f, perplexity %.3f (unigram entropy %.4f)\n", long(loaded.step), loss,
              std::exp(loss), unigram_entropy(*store, train.documents()));
  return 0;
}

namespace fs = std::filesystem;

// A Hugging Face directory -> an anvil checkpoint under `out` (out/step_00000000/checkpoint.h5,
// params only), out/tokenizer.json, and a run config whose model section is the HF config and
// whose data.train is none, so `anvil generate --checkpoint out` works as it stands.
int convert_from_hf(const std::string& hf_dir, const std::string& out, const std::string& tokenizer_arg) {
  const ModelConfig mc = read_hf_config(hf_dir);
  ANVIL_CHECK(read_hf_quantization(hf_dir).format == HfQuantFormat::None, hf_dir, " is a quantized model (config.json's "
              "quantization_config): use it as it is — `anvil generate --checkpoint ", hf_dir, "`, or model.init_from");
  const std::string tok_src = tokenizer_arg.empty() ? (fs::path(hf_dir) / "tokenizer.json").string() : tokenizer_arg;
  ANVIL_CHECK(fs::is_regular_file(tok_src), "no tokenizer: ", tok_src,
              " does not exist — pass --tokenizer path/to/tokenizer.json (generate and eval need one)");
  const Tokenizer tok = Tokenizer::load(tok_src);  // anvil must be able to encode with it
  ANVIL_CHECK(tok.vocab_size() <= mc.vocab_size, tok_src, " has ", tok.vocab_size(), " tokens but ", hf_dir,
              "/config.json says vocab_size = ", mc.vocab_size, " — the tokenizer does not belong to this model");
  std::error_code ec;
  ANVIL_CHECK(!fs::exists(out, ec) || (fs::is_directory(out, ec) && fs::is_empty(out, ec)), "--to ", out,
              " exists and is not empty — choose a new directory");
  TransformerLM model(mc);
  load_hf_weights(model, SafetensorsIndex::open(hf_dir));

  const std::string root = fs::absolute(out).lexically_normal().string();
  fs::create_directories(root);
  const std::string tok_path = (fs::path(root) / "tokenizer.json").string();
  fs::copy_file(tok_src, tok_path, fs::copy_options::overwrite_existing);
  // The architecture inline (JSON is YAML), so the stored config stands alone.
  nlohmann::json model_fields = nlohmann::json::object();
  model_fields["type"] = mc.model_type;
  model_fields["vocab_size"] = mc.vocab_size;
  model_fields["hidden_size"] = mc.hidden_size;
  model_fields["num_hidden_layers"] = mc.num_hidden_layers;
  model_fields["num_attention_heads"] = mc.num_attention_heads;
  model_fields["num_key_value_heads"] = mc.num_key_value_heads;
  model_fields["head_dim"] = mc.resolved_head_dim();
  model_fields["intermediate_size"] = mc.intermediate_size;
  model_fields["max_position_embeddings"] = mc.max_position_embeddings;
  model_fields["rope_theta"] = mc.rope_theta;
  model_fields["norm_eps"] = mc.norm_eps;
  model_fields["initializer_range"] = mc.initializer_range;
  model_fields["tie_word_embeddings"] = mc.tie_word_embeddings;
  model_fields["attention_bias"] = mc.attention_bias;
  model_fields["mlp_bias"] = mc.mlp_bias;
  model_fields["hidden_act"] = mc.hidden_act;
  model_fields["rope_scaling"] = mc.rope_scaling.to_json();
  model_fields["sliding_window"] = mc.sliding_window;
  const std::string name = fs::path(root).filename().string();
  const nlohmann::json run = {{"name", name.empty() ? "converted" : name}, {"out_dir", root}};
  const std::string yaml = "run: " + run.dump() + "\nmodel: " + model_fields.dump() +
                           "\ndata: {train: none}\ntokenizer: " + nlohmann::json{{"path", tok_path}}.dump() +
                           "\ntraining: {steps: 1}\ncheckpoint: " +
                           nlohmann::json{{"dir", root}, {"resume", "none"}}.dump() + "\n";
  RunConfig cfg = parse_run_config(yaml, "anvil convert", root);
  cfg.source = "anvil convert --from hf " + hf_dir;
  CheckpointMeta meta;
  meta.step = 0;
  meta.run_config_yaml = to_yaml(cfg);
  meta.model_config_json = mc.to_json().dump();
  const std::string dir = save_checkpoint(root, meta, model.params(), nullptr, 0);
  std::printf("wrote %s (%s, %zu tensors) and %s from %s\n", dir.c_str(), mc.model_type.c_str(),
              model.params().size(), tok_path.c_str(), hf_dir.c_str());
  return 0;
}

// An anvil checkpoint (or run directory) -> a Hugging Face directory.
int convert_to_hf(const std::string& checkpoint, const std::string& hf_dir, bool merge) {
  const std::string dir = find_checkpoint_dir(checkpoint);
  const CheckpointMeta meta = read_checkpoint_meta(dir);
  // Only the model and tokenizer matter here: the training data may be long gone.
  const RunConfig cfg = parse_run_config(meta.run_config_yaml, dir + "/" + kCheckpointFile, dir, {"data.train=none"});
  ANVIL_CHECK(!cfg.model.vocab_size_auto, dir, ": the stored config has vocab_size: auto — it was not written by "
              "`anvil train`");
  std::unique_ptr<Tokenizer> tok;
  if (fs::is_regular_file(cfg.tokenizer.path)) tok = std::make_unique<Tokenizer>(Tokenizer::load(cfg.tokenizer.path));
  ANVIL_CHECK(merge == cfg.lora.enabled(), merge ? "convert --merge: " + dir + " is not a LoRA run (lora.modules is "
              "empty), so there is nothing to merge — drop --merge" : "convert: " + dir + " is a LoRA run: its "
              "checkpoint holds adapters on the base " + cfg.model.init_from + " — write the merged dense model with "
              "--to hf DIR --merge, or the adapter alone in PEFT's format with --to peft DIR");
  if (merge) {  // save_hf writes each adapted or quantized Linear merged into a dense weight
    const LoadedModel loaded = load_lora_run(dir);
    save_hf(*loaded.model, tok.get(), hf_dir);
    const std::string into = cfg.quant.enabled() ? " into the dequantized " + cfg.quant.scheme + " base" : "";
    std::printf("wrote %s (config.json, model.safetensors%s: the LoRA adapters merged%s) from %s\n", hf_dir.c_str(),
                tok ? ", tokenizer.json, tokenizer_config.json" : "", into.c_str(), dir.c_str());
    return 0;
  }
  if (cfg.task.name == "medusa") {  // the base and, beside it, the heads in Medusa's format
    LoadModelOptions options;
    options.device = Device::cpu();
    options.compute = DType::F32;
    options.overrides = {"data.train=none"};
    const LoadedModel loaded = load_model(dir, options);
    save_hf(*loaded.model, tok.get(), hf_dir);
    save_medusa_hf(*loaded.medusa, hf_dir, fs::absolute(hf_dir).lexically_normal().string());
    std::printf("wrote %s (config.json with medusa_num_heads %ld, model.safetensors, medusa_lm_head.safetensors%s) "
                "from %s\n", hf_dir.c_str(), long(loaded.medusa->heads()),
                tok ? ", tokenizer.json, tokenizer_config.json" : "", dir.c_str());
    return 0;
  }
  TransformerLM model(cfg.model);
  load_checkpoint(dir, model.params(), nullptr);
  save_hf(model, tok.get(), hf_dir);
  std::printf("wrote %s (config.json, model.safetensors%s) from %s\n", hf_dir.c_str(),
              tok ? ", tokenizer.json, tokenizer_config.json" : "", dir.c_str());
  return 0;
}

// A LoRA run's adapters -> a PEFT adapter directory (trainer/peft_adapter.h).
int convert_to_peft(const std::string& checkpoint, const std::string& out) {
  const std::string dir = find_checkpoint_dir(checkpoint);
  const LoadedModel loaded = load_lora_run(dir);
  save_peft_adapter(*loaded.model, loaded.config, out);
  std::printf("wrote %s (adapter_config.json, adapter_model.safetensors: PEFT LoRA, r %ld, base %s) from %s\n",
              out.c_str(), long(loaded.config.lora.r), loaded.config.model.init_from.c_str(), dir.c_str());
  return 0;
}

// A QA-LoRA run -> an INT4/INT2 Hugging Face directory, the adapter folded into the zero points
// (trainer/quant_export.h; models/hf_quant.h says which consumers load it).
int convert_to_gptq(const ConvertArgs& a) {
  ANVIL_CHECK(a.merge, "convert --to gptq: pass --merge (the run's QA-LoRA adapter is folded into its quantized base)");
  const QaLoraExport e = export_qa_lora_merged(a.from[0], a.to[1]);
  std::printf("wrote %s (checkpoint_format %s%s): %ld adapters merged exactly into the zero points; largest layer "
              "output change %.2e relative (the naive dequantize+add+requantize merge: %.2e)\n", a.to[1].c_str(),
              e.format.c_str(), e.format == kAnvilFloatZeros ? ", loads in anvil only" : "", long(e.layers),
              e.exact_max_rel, e.naive_max_rel);
  return 0;
}

int run_convert(const ConvertArgs& a) {
  const std::string usage = "convert: use `--from hf HF_DIR --to CHECKPOINT_DIR`, `--from CHECKPOINT --to hf HF_DIR` "
                            "(a LoRA run: add --merge) or, for a LoRA run, `--from CHECKPOINT --to peft DIR`, or for a QA-LoRA "
                            "run `--from CHECKPOINT --to gptq DIR --merge`";
  if (a.from.size() == 2) {
    ANVIL_CHECK(a.from[0] == "hf" && a.to.size() == 1, usage);
    ANVIL_CHECK(!a.merge, "convert: --merge applies to --from CHECKPOINT (a LoRA run) only");
    return convert_from_hf(a.from[1], a.to[0], a.tokenizer);
  }
  ANVIL_CHECK(a.from.size() == 1 && a.to.size() == 2, usage);
  ANVIL_CHECK(a.tokenizer.empty(), "convert: --tokenizer applies to --from hf only");
  // One branch per target format of a checkpoint.
  if (a.to[0] == "hf") return convert_to_hf(a.from[0], a.to[1], a.merge);
  if (a.to[0] == "peft") {
    ANVIL_CHECK(!a.merge, "convert --to peft writes the adapter alone — drop --merge (or use --to hf DIR --merge)");
    return convert_to_peft(a.from[0], a.to[1]);
  }
  if (a.to[0] == "gptq") return convert_to_gptq(a);
  ANVIL_FAIL(usage, " — unknown target format '", a.to[0], "'");
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
  DataGenerateArgs dgen;
  auto* dgen_cmd = data_cmd->add_subcommand(
      "generate", "A model's continuations of corpus prompts as a token store (loss mask on the continuations)");
  dgen_cmd->add_option("--checkpoint", dgen.checkpoint, "Model: checkpoint, run or Hugging Face directory")
      ->required();
  dgen_cmd->add_option("--input", dgen.input, "Corpus token store (.h5); prompts are its documents' starts")
      ->required()->check(CLI::ExistingFile);
  dgen_cmd->add_option("--output", dgen.output, "Token store to write (.h5)")->required();
  dgen_cmd->add_option("--prompt-tokens", dgen.prompt_tokens, "Prompt = this many first tokens of a document")
      ->capture_default_str()->check(CLI::PositiveNumber);
  dgen_cmd->add_option("--max-tokens", dgen.max_tokens, "New tokens per prompt, at most")->capture_default_str()
      ->check(CLI::PositiveNumber);
  dgen_cmd->add_option("--documents", dgen.documents, "Prompts to use: a count or all")->capture_default_str();
  dgen_cmd->add_option("--batch", dgen.batch, "Prompts decoded together (the output does not depend on it)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  dgen_cmd->add_option("--temperature", dgen.temperature, "0 = greedy")->capture_default_str()->check(
      CLI::NonNegativeNumber);
  dgen_cmd->add_option("--top-k", dgen.top_k, "0 = off")->capture_default_str()->check(CLI::NonNegativeNumber);
  dgen_cmd->add_option("--top-p", dgen.top_p, "1 = off")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  dgen_cmd->add_option("--seed", dgen.seed, "Sampling seed")->capture_default_str();
  dgen_cmd->add_flag("--force", dgen.force, "Replace --output if it exists");
  dgen_cmd->add_option("--set", dgen.overrides, "Override a checkpoint config field, e.g. run.device=cpu");

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
  // Required unless --medusa gives the run (checked in run_generate).
  gen_cmd->add_option("--checkpoint", gen.checkpoint, "Checkpoint or run directory");
  gen_cmd->add_option("--prompt", gen.prompt, "Prompt text")->capture_default_str();
  gen_cmd->add_option("--max-tokens", gen.max_tokens, "Tokens to generate")->capture_default_str()->check(
      CLI::PositiveNumber);
  gen_cmd->add_option("--temperature", gen.temperature, "0 = greedy")->capture_default_str()->check(
      CLI::NonNegativeNumber);
  gen_cmd->add_option("--top-k", gen.top_k, "0 = off")->capture_default_str()->check(CLI::NonNegativeNumber);
  gen_cmd->add_option("--top-p", gen.top_p, "1 = off")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  gen_cmd->add_option("--seed", gen.seed, "Sampling seed")->capture_default_str();
  gen_cmd->add_option("--set", gen.overrides,
                      "Override a config field, e.g. run.device=cpu for a checkpoint trained on a GPU");
  gen_cmd->add_option("--draft", gen.draft, "Drafter checkpoint or HF directory: lossless speculative decoding "
                      "(same output distribution; stats on stderr)");
  gen_cmd->add_option("--early-exit", gen.early_exit, "Self-speculation: the model's first E layers (+ final norm "
                      "and head) draft --gamma tokens, the whole model verifies losslessly, sharing one KV cache; E in "
                      "[1, layers-1] (stats on stderr)");
  gen_cmd->add_option("--gamma", gen.gamma, "Draft tokens per target forward (with --draft or --early-exit; a tree's depth)")
      ->capture_default_str();
  gen_cmd->add_option("--tree-width", gen.tree_width, "With --draft: candidates per node of a draft tree --gamma "
                      "deep, verified in one target forward (1 = a chain)")->capture_default_str();
  // The Medusa flags of generate and eval medusa.
  const auto medusa_flags = [](CLI::App* cmd, MedusaFlags& f, const char* run_help) {
    cmd->add_option("--medusa", f.run, run_help);
    cmd->add_option("--tree", f.tree, "Medusa candidate tree: a published tree's name (mc_sim_7b_63, ...), a path "
                    "list like '[(0,), (1,), (0, 0)]', or a file holding one (default: mc_sim_7b_63's first 16 paths "
                    "within the heads, small for CPUs)");
    cmd->add_option("--medusa-mode", f.mode, "Acceptance at T > 0: lossless (the base's distribution exactly) | typical "
                    "(Medusa's, faster, not distribution-preserving) | greedy (T = 0 only); T = 0 is greedy")
        ->capture_default_str();
    cmd->add_option("--posterior-threshold", f.epsilon, "Typical acceptance's epsilon: accept x iff p(x) > "
                    "min(epsilon, alpha * exp(-H(p)))")->capture_default_str();
    cmd->add_option("--posterior-alpha", f.delta, "Typical acceptance's delta (alpha)")->capture_default_str();
  };
  gen_cmd->add_option("--routers", gen.routers, "A router run (task.name: router) or checkpoint: decode with its "
                      "layer-skip routers on the backbone --checkpoint (the architecture they were trained on), or "
                      "without --checkpoint on the run's model.init_from");
  medusa_flags(gen_cmd, gen.medusa, "A Medusa run (task.name: medusa): decode its base with its heads proposing a "
               "tree of candidates, verified in one base forward (replaces --checkpoint; stats on stderr)");
  EvalArgs ev;
  auto* eval_cmd = app.add_subcommand("eval", "Validation loss and perplexity of a checkpoint (eval spec: "
                                      "speculative decoding; eval medusa: Medusa decoding)");
  // Required unless `eval spec` runs (checked below): CLI11 would demand it of the subcommand too.
  eval_cmd->add_option("--checkpoint", ev.checkpoint, "Checkpoint or run directory");
  eval_cmd->add_option("--routers", ev.routers, "A router run (task.name: router) or checkpoint: its routers on the "
                       "backbone --checkpoint, or without --checkpoint the run's model.init_from; adds the capacity");
  eval_cmd->add_option("--batches", ev.batches, "Validation batches")->capture_default_str()->check(
      CLI::PositiveNumber);
  eval_cmd->add_option("--set", ev.overrides, "Override a config field, e.g. data.train=other.h5");
  EvalSpecArgs spec;
  auto* spec_cmd = eval_cmd->add_subcommand("spec", "Speculative vs plain KV-cached decoding of a target: tau, "
                                            "acceptance, drafter overhead, tokens/s, speedup");
  spec_cmd->add_option("--target", spec.target, "Target checkpoint or HF directory")->required();
  spec_cmd->add_option("--draft", spec.draft, "Drafter checkpoint or HF directory")->required();
  spec_cmd->add_option("--gammas", spec.gammas, "Draft tokens per target forward (tree depths with --tree-width)")
      ->delimiter(',')->capture_default_str();
  spec_cmd->add_option("--tree-width", spec.tree_width, "Candidates per node of a draft tree, each gamma its depth, "
                       "verified in one target forward (1 = chains; standalone drafters)")->capture_default_str();
  add_decode_eval_flags(spec_cmd, spec);
  EvalSelfSpecArgs selfspec;
  auto* selfspec_cmd = add_eval_selfspec_command(eval_cmd, selfspec);

  EvalMedusaArgs med;
  auto* med_cmd = eval_cmd->add_subcommand("medusa", "Medusa vs plain KV-cached decoding of a Medusa run's base: tau, "
                                           "acceptance per head, tokens/s, speedup (--build-tree N: a calibrated tree)");
  medusa_flags(med_cmd, med.medusa, "The Medusa run (task.name: medusa)");
  med_cmd->get_option("--medusa")->required();
  med_cmd->add_option("--prompts", med.prompts_file, "Prompts, one per line")->check(CLI::ExistingFile);
  med_cmd->add_option("--data", med.data, "Token store whose held-out documents give the prompts (default: the run's "
                      "data.train)");
  med_cmd->add_option("--num-prompts", med.num_prompts, "Prompts taken from --data")->capture_default_str()->check(
      CLI::PositiveNumber);
  med_cmd->add_option("--prompt-tokens", med.prompt_tokens, "Tokens per prompt from --data")->capture_default_str()
      ->check(CLI::PositiveNumber);
  med_cmd->add_option("--temperatures", med.temperatures, "Sampling temperatures (0 = greedy)")->delimiter(',')
      ->capture_default_str();
  med_cmd->add_option("--max-tokens", med.max_tokens, "New tokens per prompt (with --build-tree: the base's greedy "
                      "tokens per prompt the heads are scored on)")->capture_default_str()->check(CLI::PositiveNumber);
  med_cmd->add_option("--batch-size", med.batch_size, "Prompts decoded together")->capture_default_str()->check(
      CLI::PositiveNumber);
  med_cmd->add_option("--top-k", med.top_k, "0 = off")->capture_default_str()->check(CLI::NonNegativeNumber);
  med_cmd->add_option("--top-p", med.top_p, "1 = off")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  med_cmd->add_option("--seed", med.seed, "Sampling seed")->capture_default_str();
  med_cmd->add_option("--json", med.json, "Write the report as JSON here");
  med_cmd->add_option("--build-tree", med.build_tree, "Instead of the report: measure each head's top-10 accuracy "
                      "on the prompts and build the tree of N nodes with the largest expected tau");
  med_cmd->add_option("--output", med.output, "With --build-tree: write the tree (medusa_choices) here, for --tree");
  med_cmd->add_flag("--for-speed", med.for_speed, "With --build-tree N: time the base's verification forward on this "
                    "machine and take the tree of at most N nodes with the largest predicted speedup (CPUs want few)");
  med_cmd->add_option("--set", med.overrides, "Override a field of the run's stored config (e.g. "
                      "model.init_from=BASE when the base moved)");

  ConvertArgs conv;
  auto* conv_cmd = app.add_subcommand("convert", "Convert between Hugging Face directories and anvil checkpoints");
  conv_cmd->add_option("--from", conv.from, "hf HF_DIR | CHECKPOINT (a checkpoint or run directory)")
      ->required()->expected(1, 2);
  conv_cmd->add_option("--to", conv.to, "CHECKPOINT_DIR (new) | hf HF_DIR | peft DIR (a LoRA run's adapter) | "
                       "gptq HF_DIR (a QA-LoRA run, with --merge)")
      ->required()->expected(1, 2);
  conv_cmd->add_flag("--merge", conv.merge, "a LoRA run: with --to hf, merge the adapters into a dense model; with --to "
                     "gptq, fold a QA-LoRA adapter exactly into its INT4/INT2 base's zero points");
  conv_cmd->add_option("--tokenizer", conv.tokenizer, "with --from hf: tokenizer.json when HF_DIR has none")
      ->check(CLI::ExistingFile);
  conv_cmd->footer("Examples:\n  anvil convert --from hf gpt2/ --to ckpt/gpt2     (then: anvil generate --checkpoint "
                   "ckpt/gpt2)\n  anvil convert --from runs/demo --to hf export/demo\n  anvil convert --from runs/lora --to hf "
                   "export/merged --merge\n  anvil convert --from runs/lora --to peft export/adapter\n  anvil convert --from "
                   "runs/qalora --to gptq export/int4 --merge");

  bool topo_local = false;
  auto* topo_cmd = app.add_subcommand("topology", "Print where each rank landed (run it under mpirun or srun)");
  topo_cmd->add_flag("--local", topo_local, "Only this process's view from the launcher's variables (no MPI)");

  std::string plot_dir, plot_out;
  auto* plot_cmd = app.add_subcommand("plot", "Draw a run's loss, learning rate and throughput curves as a PNG");
  plot_cmd->add_option("run_dir", plot_dir, "Run directory (holding metrics.jsonl)")->required();
  plot_cmd->add_option("--output", plot_out, "PNG to write (default RUN_DIR/curves.png)");

  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands({})) known = known || sub->get_name() == argv[1];
    if (!known) {
      std::fprintf(stderr, "error: unknown command '%s' — use one of train, data, tokenizer, generate, eval, convert, plot, topology "
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
    if (*dgen_cmd) return run_data_generate(dgen);
    if (*tok_train) return run_tokenizer_train(tok);
    if (*gen_cmd) {
      gen.early_exit_given = gen_cmd->get_option("--early-exit")->count() > 0;
      return run_generate(gen);
    }
    if (*spec_cmd) return run_eval_spec(spec);
    if (*selfspec_cmd) return run_eval_selfspec(selfspec);
    if (*med_cmd) return run_eval_medusa(med);
    if (*eval_cmd) {
      if (!ev.routers.empty()) return run_eval_routers(ev.routers, ev.checkpoint, ev.batches, ev.overrides);
      ANVIL_CHECK(!ev.checkpoint.empty(), "eval: --checkpoint is required (anvil eval --checkpoint RUN_DIR), or "
                  "use anvil eval spec, anvil eval selfspec or anvil eval medusa");
      return run_eval(ev);
    }
    if (*conv_cmd) return run_convert(conv);
    if (*topo_cmd) return run_topology(topo_local);
    if (*plot_cmd) {
      std::printf("wrote %s\n", plot_run(plot_dir, plot_out).c_str());
      return 0;
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
