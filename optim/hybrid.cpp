#include "optim/hybrid.h"

#include "core/glob.h"
#include "parallel/data_parallel.h"

#include <set>
#include <sstream>

namespace anvil {

const char* param_group_name(ParamGroup g) {
  switch (g) {
    case ParamGroup::Matrix: return "matrix";
    case ParamGroup::AdamW: return "adamw";
    case ParamGroup::Frozen: return "frozen";
  }
  return "?";
}

namespace {

// The first pattern in `patterns` that matches `name`, with its index; -1 when none does.
int first_match(const std::vector<std::string>& patterns, const std::string& name) {
  for (size_t i = 0; i < patterns.size(); ++i)
    if (glob_match(patterns[i], name)) return static_cast<int>(i);
  return -1;
}

std::vector<bool> used_anywhere(Communicator& group, const std::vector<bool>& used_here) {
  const std::vector<double> counts = all_reduce_sum(group, std::vector<double>(used_here.begin(), used_here.end()));
  std::vector<bool> used;
  for (double c : counts) used.push_back(c > 0);
  return used;
}

void require_all_matched(const std::vector<std::string>& patterns, const std::vector<bool>& used, const char* list) {
  for (size_t i = 0; i < patterns.size(); ++i)
    ANVIL_CHECK(used[i], "optimizer routing: ", list, " pattern '", patterns[i],
                "' matches no parameter — check the spelling against the model's param names (logged at start-up)");
}

}  // namespace

std::vector<RouteEntry> route_params(const std::vector<Param*>& params, const RoutingConfig& config,
                                     Communicator* pp) {
  std::vector<bool> used_adamw(config.force_adamw.size()), used_matrix(config.force_matrix.size());
  std::vector<RouteEntry> routes;
  for (const Param* p : params) {
    RouteEntry r{p->name, p->value.shape(), p->role, ParamGroup::AdamW, ""};
    const int fa = first_match(config.force_adamw, p->name);
    const int fm = first_match(config.force_matrix, p->name);
    if (fa >= 0) used_adamw[fa] = true;
    if (fm >= 0) used_matrix[fm] = true;
    ANVIL_CHECK(fa < 0 || fm < 0, "optimizer routing: param ", p->name, " matches force_adamw '",
                config.force_adamw[fa < 0 ? 0 : fa], "' and force_matrix '", config.force_matrix[fm < 0 ? 0 : fm],
                "' — narrow one of the patterns so each param is forced at most one way");
    const bool is_head = first_match(config.output_heads, p->name) >= 0;
    if (!p->trainable) {
      r.group = ParamGroup::Frozen;
      r.reason = "frozen";
    } else if (fa >= 0) {
      r.reason = "forced by '" + config.force_adamw[fa] + "'";
    } else if (fm >= 0) {
      ANVIL_CHECK(p->value.dim() >= 2, "optimizer routing: force_matrix '", config.force_matrix[fm], "' matches ",
                  p->name, " ", p->value.describe(), " but the matrix optimizer needs >= 2 dims — narrow the pattern");
      r.group = ParamGroup::Matrix;
      r.reason = "forced by '" + config.force_matrix[fm] + "'";
    } else if (p->role == ParamRole::Embedding) {
      r.reason = "embedding";
    } else if (is_head || p->role == ParamRole::Output) {
      r.reason = "output head";
    } else if (p->role == ParamRole::Matrix && p->value.dim() >= 2) {
      r.group = ParamGroup::Matrix;
      r.reason = "hidden matrix";
    } else {
      r.reason = p->role == ParamRole::Matrix ? "fewer than 2 dims" : "vector";
    }
    routes.push_back(std::move(r));
  }
  if (pp && pp->size() > 1) {  // a pattern used on any stage was used in the model
    used_adamw = used_anywhere(*pp, used_adamw);
    used_matrix = used_anywhere(*pp, used_matrix);
  }
  require_all_matched(config.force_adamw, used_adamw, "force_adamw");
  require_all_matched(config.force_matrix, used_matrix, "force_matrix");
  return routes;
}

std::string format_routing(const std::vector<RouteEntry>& routes) {
  int64_t count[3] = {0, 0, 0}, elems[3] = {0, 0, 0};
  std::ostringstream lines;
  for (const RouteEntry& r : routes) {
    const int g = static_cast<int>(r.group);
    ++count[g];
    elems[g] += shape_numel(r.shape);
    lines << "  " << param_group_name(r.group) << "  " << r.name << " " << shape_str(r.shape) << " ("
          << param_role_name(r.role) << "; " << r.reason << ")\n";
  }
  std::ostringstream out;
  out << "optimizer groups: matrix " << count[0] << " params (" << elems[0] << " elements), adamw " << count[1]
      << " params (" << elems[1] << " elements), frozen " << count[2] << " params (" << elems[2] << " elements)\n"
      << lines.str();
  return out.str();
}

AdamWConfig HybridConfig::default_adamw() {
  AdamWConfig c;
  c.beta1 = 0.9;
  c.beta2 = 0.95;
  c.eps = 1e-10;
  c.weight_decay = 0.0;
  return c;
}

void HybridConfig::validate() const {
  ANVIL_CHECK(adamw_lr_ratio > 0.0, "optimizer: adamw_lr_ratio = ", adamw_lr_ratio,
              " must be > 0 (the AdamW group steps with lr * adamw_lr_ratio)");
}

HybridOptimizer::HybridOptimizer(const std::vector<Param*>& params, const MatrixOptimizerFactory& make_matrix,
                                 const HybridConfig& config, Communicator* pp)
    : config_(config), routes_(route_params(params, config.routing, pp)) {
  config_.validate();
  std::vector<Param*> matrix, rest;
  for (size_t i = 0; i < params.size(); ++i) {
    if (routes_[i].group == ParamGroup::Matrix) matrix.push_back(params[i]);
    if (routes_[i].group == ParamGroup::AdamW) rest.push_back(params[i]);
  }
  matrix_ = make_matrix(std::move(matrix));
  ANVIL_CHECK(matrix_ != nullptr, "optimizer: the matrix optimizer factory returned nothing");
  adamw_ = std::make_unique<AdamW>(std::move(rest), config_.adamw);
  name_ = std::string(matrix_->name()) + "+adamw";
  std::set<std::string> names;
  for (const NamedTensor& t : state())
    ANVIL_CHECK(names.insert(t.name).second, "optimizer: state name ", t.name,
                " occurs twice — each param must be listed once and param names must be unique");
}

void HybridOptimizer::step(double lr) {
  ++steps_;
  matrix_->step(lr);
  adamw_->step(lr * config_.adamw_lr_ratio);
}

std::vector<NamedTensor> HybridOptimizer::state() {
  std::vector<NamedTensor> out = matrix_->state();
  for (NamedTensor& t : adamw_->state()) out.push_back(std::move(t));
  return out;
}

void HybridOptimizer::set_step_count(int64_t steps) {
  steps_ = steps;
  matrix_->set_step_count(steps);
  adamw_->set_step_count(steps);
}

std::unique_ptr<HybridOptimizer> make_muon_hybrid(const std::vector<Param*>& params, const MuonConfig& muon,
                                                  const HybridConfig& config) {
  return std::make_unique<HybridOptimizer>(
      params, [&muon](std::vector<Param*> ps) { return std::make_unique<Muon>(std::move(ps), muon); }, config);
}

}  // namespace anvil
