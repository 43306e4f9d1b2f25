// `anvil eval spec` and load_drafter (see spec_commands.h).
#include "apps/spec_commands.h"

#include <omp.h>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "eval/eagle_chain_drafter.h"
#include "eval/self_speculative.h"
#include "eval/spec_eval.h"
#include "trainer/checkpoint.h"

namespace anvil {

std::unique_ptr<Tokenizer> tokenizer_of(const LoadedModel& m) {
  const std::string& path = m.config.tokenizer.path;
  if (path.empty() || !std::filesystem::is_regular_file(path)) return nullptr;
  return std::make_unique<Tokenizer>(Tokenizer::load(path));
}

std::vector<std::vector<int32_t>> prompts_from_file(const std::string& path, const Tokenizer& tokenizer,
                                                    const std::string& command) {
  std::ifstream in(path);
  ANVIL_CHECK(in.good(), command, ": cannot read --prompts ", path, " — check the path");
  std::vector<std::vector<int32_t>> prompts;
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    prompts.push_back(tokenizer.encode(line));
    ANVIL_CHECK(!prompts.back().empty(), command, ": ", path, " line '", line, "' encodes to no tokens");
  }
  ANVIL_CHECK(!prompts.empty(), command, ": ", path, " has no prompt — write one prompt per line");
  return prompts;
}

std::vector<std::vector<int32_t>> prompts_from_store(const std::string& path, const LoadedModel& model,
                                                     const Tokenizer* tokenizer, int64_t count, int64_t length,
                                                     std::string& source, const std::string& command) {
  const TokenStore store = TokenStore::open(path);
  if (tokenizer) store.check_tokenizer(tokenizer->hash_hex());
  const double fraction = model.config.data.valid_fraction;
  std::vector<int64_t> docs;
  if (fraction > 0) {
    docs = split_documents(store.num_documents(), fraction, static_cast<uint64_t>(model.config.run.seed), Split::Valid);
    source = path + " (the model's validation documents)";
  } else {
    for (int64_t d = 0; d < store.num_documents(); ++d) docs.push_back(d);
    source = path + " (every document: the model names no validation split)";
  }
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t d : docs) {
    if (static_cast<int64_t>(prompts.size()) == count) break;
    std::vector<int32_t> doc = store.document(d);
    if (static_cast<int64_t>(doc.size()) <= length) continue;  // keep documents that go on past the prompt
    doc.resize(static_cast<size_t>(length));
    prompts.push_back(std::move(doc));
  }
  ANVIL_CHECK(!prompts.empty(), command, ": ", source, " has no document longer than --prompt-tokens ", length,
              " — lower --prompt-tokens or pass --prompts FILE");
  return prompts;
}

DrafterFactory LoadedDrafter::factory() {
  if (eagle) {
    EagleDrafter* d = eagle.get();
    return [d]() -> std::unique_ptr<Drafter> { return std::make_unique<EagleChainDrafter>(*d); };
  }
  return model_drafter_factory(*model.model);
}

TreeDrafterFactory LoadedDrafter::tree_factory() {
  ANVIL_CHECK(!eagle, "tree speculative decoding: ", source, " is an EAGLE drafter, which drafts chains here — "
              "decode it without a tree (tree width 1) or use a standalone drafter");
  return model_tree_drafter_factory(*model.model);
}

LoadedDrafter load_drafter(const std::string& path, const LoadedModel& target) {
  LoadedDrafter drafter;
  std::error_code ec;
  const bool hf = std::filesystem::is_regular_file(std::filesystem::path(path) / "config.json", ec) &&
                  !std::filesystem::is_regular_file(std::filesystem::path(path) / kCheckpointFile, ec);
  if (!hf && config_from_checkpoint(path).distill.drafter == "eagle") {  // EAGLE: its own params on the target
    const std::string dir = find_checkpoint_dir(path);
    drafter.model.config = config_from_checkpoint(path);
    const std::vector<int64_t>& layers = drafter.model.config.distill.eagle_layers;
    drafter.eagle = std::make_unique<EagleDrafter>(
        *target.model, layers.empty() ? EagleDrafter::default_layers(target.model->config().num_hidden_layers) : layers);
    load_checkpoint(dir, drafter.eagle->own_params(), nullptr);  // a shape mismatch names the tensor
    drafter.eagle->body().to(target.model->device(), target.model->compute_dtype());
    drafter.eagle->share_target_weights();
    drafter.source = dir;
  } else {
    LoadModelOptions options;
    options.device = target.model->device();
    options.compute = target.model->compute_dtype();
    drafter.model = load_model(path, options);
    drafter.source = drafter.model.source;
  }
  const auto mine = tokenizer_of(drafter.model), theirs = tokenizer_of(target);
  ANVIL_CHECK(!mine || !theirs || mine->hash_hex() == theirs->hash_hex(), "the drafter ", path, " uses the tokenizer ",
              drafter.model.config.tokenizer.path, " but the target ", target.source, " uses ",
              target.config.tokenizer.path, " — a drafter must be trained with the target's tokenizer");
  return drafter;
}

namespace {

// The prompts of `eval spec` / `eval selfspec`: --prompts (encoded) or --data's held-out documents.
std::vector<std::vector<int32_t>> eval_prompts(const EvalSpecArgs& a, const LoadedModel& target, std::string& source,
                                               const std::string& command) {
  const auto tokenizer = tokenizer_of(target);
  ANVIL_CHECK(a.prompts_file.empty() || a.data.empty(), command, ": pass --prompts or --data, not both");
  if (!a.prompts_file.empty()) {
    ANVIL_CHECK(tokenizer != nullptr, command, ": ", a.target, " has no tokenizer.json to encode --prompts with");
    source = a.prompts_file;
    return prompts_from_file(a.prompts_file, *tokenizer, command);
  }
  const std::string store = a.data.empty() ? target.config.data.train : a.data;
  ANVIL_CHECK(!store.empty() && store != "none", command, ": no prompts — pass --prompts FILE (one per line) or "
              "--data STORE (held-out documents)");
  return prompts_from_store(store, target, tokenizer.get(), a.num_prompts, a.prompt_tokens, source, command);
}

SpecEvalOptions spec_eval_options(const EvalSpecArgs& a) {
  SpecEvalOptions o;
  o.gammas = a.gammas;
  o.temperatures = a.temperatures;
  o.max_new_tokens = a.max_tokens;
  o.batch_size = a.batch_size;
  o.top_k = a.top_k;
  o.top_p = a.top_p;
  o.seed = a.seed;
  return o;
}

void check_decode_eval_flags(const EvalSpecArgs& a, const char* command) {
  for (int gamma : a.gammas)
    ANVIL_CHECK(gamma >= 1, command, ": --gammas ", gamma, " — every gamma (draft tokens per target forward) must be "
                ">= 1, e.g. --gammas 2,4,6");
  for (double t : a.temperatures)
    ANVIL_CHECK(t >= 0, command, ": --temperatures ", t, " — temperatures must be >= 0 (0 = greedy), e.g. 0,1");
}

}  // namespace

int run_eval_spec(const EvalSpecArgs& a) {
  check_decode_eval_flags(a, "eval spec");
  ANVIL_CHECK(a.tree_width >= 1, "eval spec: --tree-width ", a.tree_width, " — the tree width must be >= 1 (1: "
              "chains), e.g. --tree-width 2");
  LoadModelOptions options;
  options.overrides = a.overrides;
  const LoadedModel target = load_model(a.target, options);
  if (target.config.run.threads > 0) omp_set_num_threads(static_cast<int>(target.config.run.threads));
  LoadedDrafter drafter = load_drafter(a.draft, target);
  std::string source;
  const std::vector<std::vector<int32_t>> prompts = eval_prompts(a, target, source, "eval spec");
  SpecEvalOptions o = spec_eval_options(a);
  o.tree_width = a.tree_width;
  const TreeDrafterFactory tree = a.tree_width > 1 ? drafter.tree_factory() : nullptr;
  const int threads = omp_get_max_threads();
  std::printf("target %s, drafter %s: %zu prompts from %s, %d new tokens, batch %ld, %d threads, %s\n",
              target.source.c_str(), drafter.source.c_str(), prompts.size(), source.c_str(), a.max_tokens,
              long(a.batch_size), threads, target.model->device().str().c_str());
  const std::vector<SpecEvalCase> cases = run_spec_eval(*target.model, drafter.factory(), prompts, o, tree);
  std::printf("%s", spec_eval_table(cases).c_str());
  if (!a.json.empty()) {
    const nlohmann::json report = {{"target", target.source},       {"drafter", drafter.source},
                                   {"prompts", prompts.size()},     {"prompt_source", source},
                                   {"max_new_tokens", a.max_tokens}, {"batch_size", a.batch_size},
                                   {"threads", threads},            {"top_k", a.top_k},
                                   {"top_p", a.top_p},              {"seed", a.seed},
                                   {"tree_width", a.tree_width},
                                   {"prompt_ids", prompts},  // so peers (bench/) decode the same prompts
                                   {"cases", spec_eval_json(cases)}};
    std::ofstream out(a.json);
    ANVIL_CHECK(out.good(), "eval spec: cannot write --json ", a.json, " — check the directory exists");
    out << report.dump(2) << "\n";
    std::printf("wrote %s\n", a.json.c_str());
  }
  return 0;
}

void add_decode_eval_flags(CLI::App* cmd, EvalSpecArgs& a) {
  cmd->add_option("--prompts", a.prompts_file, "Prompts, one per line")->check(CLI::ExistingFile);
  cmd->add_option("--data", a.data, "Token store whose held-out documents give the prompts (default: the "
                  "target's data.train)");
  cmd->add_option("--num-prompts", a.num_prompts, "Prompts taken from --data")->capture_default_str()->check(
      CLI::PositiveNumber);
  cmd->add_option("--prompt-tokens", a.prompt_tokens, "Tokens per prompt from --data")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--temperatures", a.temperatures, "Sampling temperatures (0 = greedy)")->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--max-tokens", a.max_tokens, "New tokens per prompt")->capture_default_str()->check(
      CLI::PositiveNumber);
  cmd->add_option("--batch-size", a.batch_size, "Prompts decoded together")->capture_default_str()->check(
      CLI::PositiveNumber);
  cmd->add_option("--top-k", a.top_k, "0 = off")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", a.top_p, "1 = off")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", a.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--json", a.json, "Write the report as JSON here");
  cmd->add_option("--set", a.overrides, "Override a field of the target's stored config");
}

CLI::App* add_eval_selfspec_command(CLI::App* eval_cmd, EvalSelfSpecArgs& a) {
  auto* cmd = eval_cmd->add_subcommand("selfspec", "Early-exit self-speculative vs plain KV-cached decoding of one "
                                       "model (its first E layers draft, the whole model verifies losslessly): tau, "
                                       "acceptance, tokens/s, speedup");
  cmd->add_option("--checkpoint", a.spec.target, "Checkpoint, run directory or HF directory")->required();
  cmd->add_option("--exit-layer,--exit-layers", a.exit_layers, "Layers the drafter runs, E in [1, L-1] (a list: "
                  "one table each)")->delimiter(',')->required();
  cmd->add_option("--gamma,--gammas", a.spec.gammas, "Draft tokens per verification")->delimiter(',')
      ->capture_default_str();
  add_decode_eval_flags(cmd, a.spec);
  return cmd;
}

int run_eval_selfspec(const EvalSelfSpecArgs& args) {
  const EvalSpecArgs& a = args.spec;
  check_decode_eval_flags(a, "eval selfspec");
  ANVIL_CHECK(!args.exit_layers.empty(), "eval selfspec: give --exit-layer E (the layers the drafter runs)");
  LoadModelOptions options;
  options.overrides = a.overrides;
  const LoadedModel target = load_model(a.target, options);
  if (target.config.run.threads > 0) omp_set_num_threads(static_cast<int>(target.config.run.threads));
  TransformerLM& model = *target.model;
  for (int64_t e : args.exit_layers)  // every bad flag before any decoding
    for (int gamma : a.gammas) check_self_speculation(model, e, gamma, "eval selfspec: --exit-layer/--gamma");
  std::string source;
  const std::vector<std::vector<int32_t>> prompts = eval_prompts(a, target, source, "eval selfspec");
  const SpecEvalOptions o = spec_eval_options(a);
  const int threads = omp_get_max_threads();
  const int64_t L = model.config().num_hidden_layers;
  std::printf("model %s (%ld layers), early-exit drafter = its first E layers + final norm + head, sharing its KV "
              "cache: %zu prompts from %s, %d new tokens, batch %ld, %d threads, %s\n", target.source.c_str(), long(L),
              prompts.size(), source.c_str(), a.max_tokens, long(a.batch_size), threads, model.device().str().c_str());
  nlohmann::json cases_json = nlohmann::json::array();
  for (int64_t e : args.exit_layers) {
    const ChainDecodeFn decode = [&](const std::vector<std::vector<int32_t>>& chunk, int max_new,
                                     const SamplingConfig& cfg, int gamma, std::optional<int32_t> stop) {
      return self_speculative_generate(model, e, chunk, max_new, cfg, gamma, stop);
    };
    const std::vector<SpecEvalCase> cases = run_decode_eval(model, decode, prompts, o);
    std::printf("exit layer %ld of %ld (c = early-exit forward time / verification forward time of layers %ld..%ld)\n%s",
                long(e), long(L), long(e), long(L - 1), spec_eval_table(cases).c_str());
    for (nlohmann::json c : spec_eval_json(cases)) {
      c["exit_layer"] = e;
      cases_json.push_back(std::move(c));
    }
  }
  if (!a.json.empty()) {
    const nlohmann::json report = {{"model", target.source},        {"num_layers", L},
                                   {"prompts", prompts.size()},     {"prompt_source", source},
                                   {"max_new_tokens", a.max_tokens}, {"batch_size", a.batch_size},
                                   {"threads", threads},            {"top_k", a.top_k},
                                   {"top_p", a.top_p},              {"seed", a.seed},
                                   {"prompt_ids", prompts},         {"cases", cases_json}};
    std::ofstream out(a.json);
    ANVIL_CHECK(out.good(), "eval selfspec: cannot write --json ", a.json, " — check the directory exists");
    out << report.dump(2) << "\n";
    std::printf("wrote %s\n", a.json.c_str());
  }
  return 0;
}

}  // namespace anvil
