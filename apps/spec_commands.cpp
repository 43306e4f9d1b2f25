// `anvil eval spec` and load_drafter (see spec_commands.h).
#include "apps/spec_commands.h"

#include <omp.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "eval/eagle_chain_drafter.h"
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

int run_eval_spec(const EvalSpecArgs& a) {
  for (int gamma : a.gammas)
    ANVIL_CHECK(gamma >= 1, "eval spec: --gammas ", gamma, " — every gamma (draft tokens per target forward) must be "
                ">= 1, e.g. --gammas 2,4,6");
  ANVIL_CHECK(a.tree_width >= 1, "eval spec: --tree-width ", a.tree_width, " — the tree width must be >= 1 (1: "
              "chains), e.g. --tree-width 2");
  for (double t : a.temperatures)
    ANVIL_CHECK(t >= 0, "eval spec: --temperatures ", t, " — temperatures must be >= 0 (0 = greedy), e.g. 0,1");
  LoadModelOptions options;
  options.overrides = a.overrides;
  const LoadedModel target = load_model(a.target, options);
  if (target.config.run.threads > 0) omp_set_num_threads(static_cast<int>(target.config.run.threads));
  LoadedDrafter drafter = load_drafter(a.draft, target);
  const auto tokenizer = tokenizer_of(target);
  ANVIL_CHECK(a.prompts_file.empty() || a.data.empty(), "eval spec: pass --prompts or --data, not both");
  std::string source;
  std::vector<std::vector<int32_t>> prompts;
  if (!a.prompts_file.empty()) {
    ANVIL_CHECK(tokenizer != nullptr, "eval spec: ", a.target, " has no tokenizer.json to encode --prompts with");
    prompts = prompts_from_file(a.prompts_file, *tokenizer, "eval spec");
    source = a.prompts_file;
  } else {
    const std::string store = a.data.empty() ? target.config.data.train : a.data;
    ANVIL_CHECK(!store.empty() && store != "none", "eval spec: no prompts — pass --prompts FILE (one per line) or "
                "--data STORE (held-out documents)");
    prompts = prompts_from_store(store, target, tokenizer.get(), a.num_prompts, a.prompt_tokens, source, "eval spec");
  }
  SpecEvalOptions o;
  o.gammas = a.gammas;
  o.temperatures = a.temperatures;
  o.max_new_tokens = a.max_tokens;
  o.batch_size = a.batch_size;
  o.top_k = a.top_k;
  o.top_p = a.top_p;
  o.seed = a.seed;
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

}  // namespace anvil
