// The Medusa commands of the CLI: `anvil eval medusa` (Medusa vs plain decoding of the run's base,
// or --build-tree: a tree calibrated on the heads' measured accuracy) and the Medusa half of
// `anvil generate --medusa` (apps/anvil.cpp parses the flags).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "eval/medusa_eval.h"
#include "trainer/load_model.h"

namespace anvil {

// The flags that pick a tree and an acceptance rule, shared by generate and eval medusa.
struct MedusaFlags {
  std::string run;   // --medusa: a medusa run or checkpoint (task.name: medusa)
  std::string tree;  // --tree: a published tree's name, a path list, or a file; empty: default_medusa_tree
  std::string mode = "lossless";  // --medusa-mode, the rule at T > 0 (T = 0 is greedy)
  double epsilon = 0.09, delta = 0.3;  // --posterior-threshold, --posterior-alpha (typical only)
};

// The run at flags.run, which must be a medusa run (its heads attached).
LoadedModel load_medusa_run(const MedusaFlags& flags, const std::vector<std::string>& overrides);
// The tree of the flags for the run's heads, and the acceptance rule at `temperature`.
MedusaTree medusa_tree_of(const MedusaFlags& flags, const MedusaHeads& heads);
MedusaAcceptance medusa_acceptance_of(const MedusaFlags& flags, double temperature);

struct EvalMedusaArgs {
  MedusaFlags medusa;
  std::string prompts_file;  // one prompt per line, or
  std::string data;          // a token store: the first prompt_tokens of its held-out documents
  std::string json;          // where to write the JSON report (optional)
  std::vector<double> temperatures{0, 1};
  int max_tokens = 64;
  int64_t num_prompts = 8, prompt_tokens = 16, batch_size = 1, top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  int build_tree = 0;   // > 0: build a tree of this many nodes instead of the speed report
  std::string output;   // with build_tree: where to write its medusa_choices
  bool for_speed = false;  // with build_tree: at most that many nodes, sized by this machine's measured costs
  std::vector<std::string> overrides;  // --set for the run's stored config
};

int run_eval_medusa(const EvalMedusaArgs& args);

}  // namespace anvil
