// `anvil eval medusa` and the flags `anvil generate --medusa` shares with it (see medusa_commands.h).
#include "apps/medusa_commands.h"

#include <omp.h>

#include <cstdio>
#include <fstream>

#include "apps/spec_commands.h"

namespace anvil {

LoadedModel load_medusa_run(const MedusaFlags& flags, const std::vector<std::string>& overrides) {
  LoadModelOptions options;
  options.overrides = overrides;
  LoadedModel run = load_model(flags.run, options);
  ANVIL_CHECK(run.medusa != nullptr, "--medusa ", flags.run, " is not a Medusa run (its task.name is ",
              run.config.task.name, ") — pass a run trained with task.name: medusa, or decode this model with "
              "--checkpoint");
  return run;
}

MedusaTree medusa_tree_of(const MedusaFlags& flags, const MedusaHeads& heads) {
  const int K = static_cast<int>(heads.heads());
  return flags.tree.empty() ? default_medusa_tree(K) : load_medusa_tree(flags.tree, K, "--tree");
}

MedusaAcceptance medusa_acceptance_of(const MedusaFlags& flags, double temperature) {
  MedusaAcceptance a;
  a.mode = parse_medusa_mode(flags.mode, "--medusa-mode");
  a.epsilon = flags.epsilon;
  a.delta = flags.delta;
  if (temperature == 0 && a.mode == MedusaMode::Lossless) a.mode = MedusaMode::Greedy;  // its T = 0 limit
  return a;
}

namespace {

// `anvil eval medusa --build-tree N`: the heads' top-k accuracy on the prompts, the tree of N
// nodes it makes optimal, printed (and written to --output) in medusa_choices format.
int build_tree(const EvalMedusaArgs& a, LoadedModel& run, const std::vector<std::vector<int32_t>>& prompts,
               const std::string& source) {
  std::vector<int64_t> positions;
  const std::vector<std::vector<double>> accuracy =
      measure_medusa_accuracy(*run.model, *run.medusa, prompts, a.max_tokens, kMedusaTopK, &positions);
  std::printf("heads' top-%d accuracy on %zu prompts from %s, %d greedy tokens of the base each:\n", kMedusaTopK,
              prompts.size(), source.c_str(), a.max_tokens);
  for (size_t k = 0; k < accuracy.size(); ++k) {
    std::printf("  head %zu (token t+%zu, %ld positions):", k + 1, k + 2, long(positions[k]));
    for (double acc : accuracy[k]) std::printf(" %.3f", acc);
    std::printf("\n");
  }
  MedusaTree tree = build_medusa_tree(accuracy, a.build_tree);
  if (a.for_speed) {  // the size this machine decodes fastest with, from timed verification forwards
    int64_t prefix = 0;
    for (const auto& p : prompts) prefix = std::max<int64_t>(prefix, static_cast<int64_t>(p.size()));
    prefix = std::max<int64_t>(1, std::min<int64_t>(prefix + a.max_tokens / 2,
                                                     run.model->config().max_position_embeddings - a.build_tree - 1));
    const MedusaCostModel cost = measure_medusa_cost(*run.model, *run.medusa, a.build_tree, prefix);
    std::printf("this machine (%d threads, %s): plain step %.3f ms, a head %.3f ms; verifying T tokens:",
                omp_get_max_threads(), run.model->device().str().c_str(), 1e3 * cost.plain_seconds,
                1e3 * cost.head_seconds);
    for (size_t i = 0; i < cost.sizes.size(); ++i)
      std::printf(" T=%ld %.3f ms", long(cost.sizes[i]), 1e3 * cost.verify_seconds[i]);
    std::printf("\n");
    SpeedTree best = build_medusa_tree_for_speed(accuracy, a.build_tree, cost);
    std::printf("predicted speedup %.2fx at %ld nodes (the tree of %d nodes: %.2fx)\n", best.predicted_speedup,
                long(best.tree.nodes()), a.build_tree,
                (1.0 + expected_accept_length(tree, accuracy)) * cost.plain_seconds /
                    cost.round_seconds(tree.nodes(), tree.depth()));
    tree = std::move(best.tree);
  }
  const std::string choices = format_medusa_choices(tree);
  std::printf("tree of %ld nodes, depth %d, expected tau %.3f (1 + its expected accepted length):\n%s\n",
              long(tree.nodes()), tree.depth(), 1.0 + expected_accept_length(tree, accuracy), choices.c_str());
  if (!a.output.empty()) {
    std::ofstream out(a.output);
    ANVIL_CHECK(out.good(), "eval medusa: cannot write --output ", a.output, " — check the directory exists");
    out << choices << "\n";
    std::printf("wrote %s (decode with --tree %s)\n", a.output.c_str(), a.output.c_str());
  }
  return 0;
}

}  // namespace

int run_eval_medusa(const EvalMedusaArgs& a) {
  for (double t : a.temperatures)
    ANVIL_CHECK(t >= 0, "eval medusa: --temperatures ", t, " — temperatures must be >= 0 (0 = greedy), e.g. 0,1");
  ANVIL_CHECK(a.build_tree >= 0, "eval medusa: --build-tree ", a.build_tree, " — give the tree's node count, e.g. 16");
  ANVIL_CHECK(!a.for_speed || a.build_tree > 0, "eval medusa: --for-speed sizes the tree --build-tree N builds — "
              "add --build-tree N (the most nodes to consider, e.g. 32)");
  ANVIL_CHECK(a.output.empty() || a.build_tree > 0, "eval medusa: --output writes the tree --build-tree N builds — "
              "add --build-tree N");
  ANVIL_CHECK(a.prompts_file.empty() || a.data.empty(), "eval medusa: pass --prompts or --data, not both");
  LoadedModel run = load_medusa_run(a.medusa, a.overrides);
  if (run.config.run.threads > 0) omp_set_num_threads(static_cast<int>(run.config.run.threads));
  const auto tokenizer = tokenizer_of(run);
  std::string source;
  std::vector<std::vector<int32_t>> prompts;
  if (!a.prompts_file.empty()) {
    ANVIL_CHECK(tokenizer != nullptr, "eval medusa: ", a.medusa.run, " has no tokenizer.json to encode --prompts with");
    prompts = prompts_from_file(a.prompts_file, *tokenizer, "eval medusa");
    source = a.prompts_file;
  } else {
    const std::string store = a.data.empty() ? run.config.data.train : a.data;
    ANVIL_CHECK(!store.empty() && store != "none", "eval medusa: no prompts — pass --prompts FILE (one per line) or "
                "--data STORE (held-out documents)");
    prompts = prompts_from_store(store, run, tokenizer.get(), a.num_prompts, a.prompt_tokens, source, "eval medusa");
  }
  if (a.build_tree > 0) return build_tree(a, run, prompts, source);

  const MedusaTree tree = medusa_tree_of(a.medusa, *run.medusa);
  MedusaEvalOptions o;
  o.temperatures = a.temperatures;
  o.max_new_tokens = a.max_tokens;
  o.batch_size = a.batch_size;
  o.top_k = a.top_k;
  o.top_p = a.top_p;
  o.seed = a.seed;
  o.acceptance = medusa_acceptance_of(a.medusa, 1.0);  // the rule at T > 0; run_medusa_eval takes greedy at T = 0
  const int threads = omp_get_max_threads();
  std::printf("medusa run %s (%ld heads): tree %s of %ld nodes, depth %d; %zu prompts from %s, %d new tokens, "
              "batch %ld, %d threads, %s\n", run.source.c_str(), long(run.medusa->heads()),
              a.medusa.tree.empty() ? "default" : a.medusa.tree.c_str(), long(tree.nodes()), tree.depth(),
              prompts.size(), source.c_str(), a.max_tokens, long(a.batch_size), threads,
              run.model->device().str().c_str());
  const std::vector<MedusaEvalCase> cases = run_medusa_eval(*run.model, *run.medusa, tree, prompts, o);
  std::printf("%s", medusa_eval_table(cases).c_str());
  if (!a.json.empty()) {
    const nlohmann::json report = {{"medusa", run.source},
                                   {"heads", run.medusa->heads()},
                                   {"tree", format_medusa_choices(tree)},
                                   {"tree_nodes", tree.nodes()},
                                   {"tree_depth", tree.depth()},
                                   {"mode_above_zero", a.medusa.mode},
                                   {"posterior_threshold", a.medusa.epsilon},
                                   {"posterior_alpha", a.medusa.delta},
                                   {"prompts", prompts.size()},
                                   {"prompt_source", source},
                                   {"max_new_tokens", a.max_tokens},
                                   {"batch_size", a.batch_size},
                                   {"threads", threads},
                                   {"top_k", a.top_k},
                                   {"top_p", a.top_p},
                                   {"seed", a.seed},
                                   {"prompt_ids", prompts},
                                   {"cases", medusa_eval_json(cases)}};
    std::ofstream out(a.json);
    ANVIL_CHECK(out.good(), "eval medusa: cannot write --json ", a.json, " — check the directory exists");
    out << report.dump(2) << "\n";
    std::printf("wrote %s\n", a.json.c_str());
  }
  return 0;
}

}  // namespace anvil
