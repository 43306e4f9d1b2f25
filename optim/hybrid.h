// HybridOptimizer: a matrix optimizer (Muon, SOAP, COSMOS) for hidden 2-D weights
// and AdamW for everything else — embeddings, output heads, norms and biases —
// routed by role and name (ALGORITHMS.md 2a "Which parameters use AdamW instead").
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "optim/adamw.h"
#include "optim/muon.h"

namespace anvil {

class Communicator;

enum class ParamGroup { Matrix, AdamW, Frozen };
const char* param_group_name(ParamGroup g);  // "matrix" | "adamw" | "frozen"

// Patterns are globs (core/glob.h: `*`, `?`, `[...]`; `*` also matches dots)
// over the full dotted name, e.g. "model.layers.0.*" or "*.mlp.down_proj.weight".
struct RoutingConfig {
  // Output-role params (an untied lm_head) are heads already; params whose name matches
  // are heads too: AdamW even when they are Matrix-role. Tied heads need no entry: the
  // shared weight is the Embedding-role input embedding.
  std::vector<std::string> output_heads = {"lm_head.weight"};
  // Overrides, applied before the role rules. A name may not match both lists, and
  // every pattern must match at least one param (a typo is an error, not a no-op).
  std::vector<std::string> force_adamw;
  std::vector<std::string> force_matrix;  // only params with >= 2 dims
};

struct RouteEntry {
  std::string name;
  Shape shape;
  ParamRole role;
  ParamGroup group;
  std::string reason;  // e.g. "embedding", "output head", "forced by 'model.layers.0.*'"
};

// Decides each param's group. Rules, first match wins: frozen; force_adamw;
// force_matrix; Embedding role; Output role or output_heads; Matrix role with >= 2 dims -> matrix;
// the rest (vectors, 1-D) -> AdamW. Throws on conflicting or unmatched patterns. Under
// pipeline parallelism `params` are one stage's: pass the pp group (a collective over it) and a
// force pattern need only match on some stage; null: `params` are the whole model.
std::vector<RouteEntry> route_params(const std::vector<Param*>& params, const RoutingConfig& config,
                                     Communicator* pp = nullptr);
// One line per param plus per-group totals, for the start-up log.
std::string format_routing(const std::vector<RouteEntry>& routes);

struct HybridConfig {
  RoutingConfig routing;
  // Muon's auxiliary AdamW defaults: lr 3e-4 against Muon's 0.02, betas (0.9, 0.95), eps 1e-10, wd 0.
  AdamWConfig adamw = default_adamw();
  // The AdamW group steps with lr * adamw_lr_ratio (the schedule's lr drives both groups).
  // 0.015 = 3e-4 / 0.02 (Keller's pair); use 1.0 with Moonlight's shared-lr convention.
  double adamw_lr_ratio = 0.015;

  static AdamWConfig default_adamw();
  void validate() const;
};

// Builds the matrix optimizer over the params routed to it (possibly none).
using MatrixOptimizerFactory = std::function<std::unique_ptr<Optimizer>(std::vector<Param*>)>;

class HybridOptimizer : public Optimizer {
 public:
  // pp: the pipeline group `params` are one stage of (see route_params); null: the whole model.
  HybridOptimizer(const std::vector<Param*>& params, const MatrixOptimizerFactory& make_matrix,
                  const HybridConfig& config, Communicator* pp = nullptr);
  // "<matrix>+adamw", e.g. "muon+adamw".
  const char* name() const override { return name_.c_str(); }
  // The matrix group steps with lr, the AdamW group with lr * adamw_lr_ratio.
  void step(double lr) override;
  // The matrix optimizer's state, then AdamW's; names are checked unique at construction.
  std::vector<NamedTensor> state() override;
  int64_t step_count() const override { return steps_; }
  void set_step_count(int64_t steps) override;

  const std::vector<RouteEntry>& routing() const { return routes_; }
  Optimizer& matrix_optimizer() { return *matrix_; }
  AdamW& adamw() { return *adamw_; }

 private:
  HybridConfig config_;
  std::vector<RouteEntry> routes_;
  std::unique_ptr<Optimizer> matrix_;
  std::unique_ptr<AdamW> adamw_;
  std::string name_;
  int64_t steps_ = 0;
};

// The usual Muon set-up: Muon on the hidden matrices, AdamW on the rest.
std::unique_ptr<HybridOptimizer> make_muon_hybrid(const std::vector<Param*>& params, const MuonConfig& muon,
                                                  const HybridConfig& config);

}  // namespace anvil
