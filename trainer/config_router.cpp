// The router section (task router; trainer/router_backbone.h): layer-skip routers on the frozen
// model.init_from backbone. Every key is checked here, with the backbone's layer count known
// (model.init_from's architecture is the model section's), so a bad layer names the YAML line.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

#include "trainer/config.h"
#include "trainer/config_reader.h"

namespace anvil::config_detail {

void parse_router(const Section& s, const RunConfig& c, RouterSection& r) {
  const RouterSection defaults;
  s.read_choice("kind", r.kind, {"mindskip", "drllm"});
  std::vector<std::string> layers;
  s.read("layers", layers);
  r.layers.clear();
  for (const std::string& text : layers) {
    char* end = nullptr;
    const long long layer = std::strtoll(text.c_str(), &end, 10);
    s.require(!text.empty() && *end == '\0', "layers", "holds '", text,
              "', which is not a layer index — list global layer indices, e.g. [4, 5, 6], or [] for the last n "
              "but the final one");
    r.layers.push_back(layer);
  }
  s.read("n", r.n);
  s.read_choice("scope", r.scope, {"attention", "mlp", "block"});
  s.read_choice("unit", r.unit, {"sequence", "token"});
  s.read("tau", r.tau);
  s.read_choice("objective", r.objective, {"lm", "kl"});
  s.read("capacity_target", r.capacity_target);
  s.read("capacity_weight", r.capacity_weight);
  s.read("train_skipped", r.train_skipped);
  s.read("hidden", r.hidden);
  s.read("windows", r.windows);
  s.read("search_budget", r.search_budget);
  s.read("focal_gamma", r.focal_gamma);
  const std::pair<const char*, bool> mindskip_only[] = {{"scope", r.scope != defaults.scope},
                                                        {"unit", r.unit != defaults.unit},
                                                        {"tau", r.tau != defaults.tau},
                                                        {"objective", r.objective != defaults.objective},
                                                        {"capacity_target", r.capacity_target != defaults.capacity_target},
                                                        {"capacity_weight", r.capacity_weight != defaults.capacity_weight},
                                                        {"train_skipped", r.train_skipped != defaults.train_skipped}};
  const std::pair<const char*, bool> drllm_only[] = {{"hidden", r.hidden != defaults.hidden},
                                                     {"windows", r.windows != defaults.windows},
                                                     {"search_budget", r.search_budget != defaults.search_budget},
                                                     {"focal_gamma", r.focal_gamma != defaults.focal_gamma}};
  if (c.task.name != "router") {
    s.require(r.kind == defaults.kind, "kind", "is set but task.name is ", c.task.name, " — the router section "
              "configures task.name: router only; set task.name: router or remove the router section");
    s.require(r.layers.empty() && r.n == defaults.n, "layers", "(or n) is set but task.name is ",
              c.task.name, " — the router section configures task.name: router only; set task.name: router or remove "
              "the router section");
    for (const auto& [key, set] : mindskip_only)
      s.require(!set, key, "is set but task.name is ", c.task.name, " — the router section configures task.name: "
                "router only; set task.name: router or remove the router section");
    for (const auto& [key, set] : drllm_only)
      s.require(!set, key, "is set but task.name is ", c.task.name, " — the router section configures task.name: "
                "router only; set task.name: router or remove the router section");
    return;
  }
  const int64_t L = c.model.num_hidden_layers;
  s.require(r.n >= 1, "n", "must be at least 1 (the default layers are the last n but the final one; MindSkip: 16), "
            "got ", r.n);
  std::vector<int64_t> sorted = r.layers;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    const int64_t layer = sorted[i];
    s.require(layer >= 0 && layer < L, "layers", "holds layer ", layer, ", outside the backbone's ", L,
              " layers (0 .. ", L - 1, ") — list layers in [0, ", L - 2, "]");
    s.require(layer != L - 1, "layers", "holds ", layer, ", the last layer, which never skips (its output is what the "
              "head reads) — list layers in [0, ", L - 2, "]");
    s.require(i == 0 || sorted[i - 1] != layer, "layers", "lists layer ", layer, " twice — list each layer once");
  }
  s.require(L >= 2, "layers", "the backbone has ", L, " layer(s); a router needs a layer before the last — use a "
            "backbone with at least 2 layers");
  r.layers = sorted;
  if (r.kind == "mindskip") {
    for (const auto& [key, set] : drllm_only)
      s.require(!set, key, "configures kind: drllm only, but kind is mindskip — set kind: drllm or remove ", key);
    s.require(r.tau > 0 && r.tau < 1, "tau", "must be in (0, 1) (a gate runs iff sigmoid(w . xbar) >= tau; "
              "MindSkip: 0.5), got ", r.tau);
    s.require(r.capacity_target > 0 && r.capacity_target <= 1, "capacity_target", "must be in (0, 1] (the share of "
              "router units meant to run; 1 = no skipping asked), got ", r.capacity_target);
    s.require(std::isfinite(r.capacity_weight) && r.capacity_weight >= 0, "capacity_weight", "must be >= 0 (lambda of "
              "lambda * relu(capacity - target); 0 = the LM loss alone decides), got ", r.capacity_weight);
  } else {
    for (const auto& [key, set] : mindskip_only)
      s.require(!set, key, "configures kind: mindskip only, but kind is drllm — set kind: mindskip or remove ", key);
    s.require(r.hidden >= 1, "hidden", "must be at least 1 (the router MLP's width; Dr.LLM: 128), got ", r.hidden);
    s.require(r.windows >= 1, "windows", "must be at least 1 (windows of the windowed mean; Dr.LLM: 8), got ",
              r.windows);
    s.require(r.search_budget >= 1, "search_budget", "must be at least 1 (forward evaluations per training sequence "
              "in the label search), got ", r.search_budget);
    s.require(std::isfinite(r.focal_gamma) && r.focal_gamma >= 0, "focal_gamma", "must be >= 0 (0 = plain "
              "cross-entropy; Dr.LLM: 2), got ", r.focal_gamma);
  }
}

}  // namespace anvil::config_detail
