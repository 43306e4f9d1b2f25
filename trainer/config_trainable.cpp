// training.trainable: which params train. Patterns are globs (core/glob.h) over the HF param
// names; each must match some param of the model (under pipeline parallelism: of some stage).
#include <algorithm>

#include "core/error.h"
#include "core/glob.h"
#include "core/param.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "trainer/config.h"
#include "trainer/did_you_mean.h"

namespace anvil {
namespace {

// Per pattern: whether it matches one of `param_names`.
std::vector<bool> patterns_matched(const RunConfig& config, const std::vector<std::string>& param_names) {
  std::vector<bool> matched;
  for (const auto& pattern : config.training.trainable)
    matched.push_back(std::any_of(param_names.begin(), param_names.end(),
                                  [&](const std::string& name) { return glob_match(pattern, name); }));
  return matched;
}

// Throws for the first pattern not `matched`, showing the `param_names` that share the longest
// literal prefix with it (the likely intent); `model_params` is the whole model's param count.
void require_matched(const RunConfig& config, const std::vector<std::string>& param_names,
                     const std::vector<bool>& matched, int64_t model_params) {
  for (size_t i = 0; i < matched.size(); ++i) {
    if (matched[i]) continue;
    const std::string& pattern = config.training.trainable[i];
    const std::string literal = pattern.substr(0, pattern.find_first_of("*?["));
    size_t best = 0;
    std::vector<std::string> near;
    for (const auto& name : param_names) {
      size_t common = 0;
      while (common < literal.size() && common < name.size() && literal[common] == name[common]) ++common;
      if (common > best) best = common, near.clear();
      if (common == best && near.size() < 4) near.push_back(name);
    }
    ANVIL_FAIL(config.source, ": training.trainable: pattern '", pattern, "' matches none of the model's ",
               model_params, " parameters — names look like ", join_alternatives(near, ", "),
               " (`*` matches any characters, dots included; `?` one character)");
  }
}

}  // namespace

bool matches_trainable(const RunConfig& config, const std::string& param_name) {
  for (const auto& pattern : config.training.trainable)
    if (glob_match(pattern, param_name)) return true;
  return false;
}

void check_trainable_patterns(const RunConfig& config, const std::vector<std::string>& param_names) {
  require_matched(config, param_names, patterns_matched(config, param_names),
                  static_cast<int64_t>(param_names.size()));
}

std::vector<Param*> select_trainable(const RunConfig& config, const std::vector<Param*>& params, Communicator* pp) {
  std::vector<std::string> names;
  for (const Param* p : params) names.push_back(p->name);
  std::vector<bool> matched = patterns_matched(config, names);
  int64_t model_params = static_cast<int64_t>(names.size());
  if (pp && pp->size() > 1) {  // a pattern matched on any stage matched the model
    std::vector<double> counts(matched.begin(), matched.end());
    counts.push_back(static_cast<double>(model_params));
    counts = all_reduce_sum(*pp, counts);
    for (size_t i = 0; i < matched.size(); ++i) matched[i] = counts[i] > 0;
    model_params = static_cast<int64_t>(counts.back());
  }
  require_matched(config, names, matched, model_params);  // a typo would otherwise silently freeze the model
  std::vector<Param*> trainable;
  for (Param* p : params) {
    p->set_trainable(matches_trainable(config, p->name));
    if (p->trainable) trainable.push_back(p);
  }
  ANVIL_CHECK(!trainable.empty() || (pp && pp->size() > 1),
              "training.trainable is empty — list glob patterns over parameter names, e.g. [\"*\"] to train everything");
  return trainable;
}

}  // namespace anvil
