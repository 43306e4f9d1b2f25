#include "optim/distributed_optimizer.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <sstream>

namespace anvil {
namespace {

// One all_to_allv of f32 tensors through staging buffers on `device` (the params'): sends[r]
// are copied out to rank r in order, recvs[r] are filled from rank r in order (any shapes and
// strides; both sides list matching numels).
void exchange(Communicator& comm, Device device, const std::vector<std::vector<Tensor>>& sends,
              const std::vector<std::vector<Tensor>>& recvs) {
  const int n = comm.size();
  std::vector<int64_t> send_counts(n, 0), recv_counts(n, 0);
  for (int r = 0; r < n; ++r) {
    for (const Tensor& t : sends[r]) send_counts[r] += t.numel();
    for (const Tensor& t : recvs[r]) recv_counts[r] += t.numel();
  }
  const int64_t send_total = std::accumulate(send_counts.begin(), send_counts.end(), int64_t{0});
  const int64_t recv_total = std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0});
  Tensor out = Tensor::empty({std::max<int64_t>(send_total, 1)}, DType::F32, device);
  Tensor in = Tensor::empty({std::max<int64_t>(recv_total, 1)}, DType::F32, device);
  int64_t at = 0;
  for (int r = 0; r < n; ++r)
    for (const Tensor& t : sends[r]) {
      out.slice(0, at, at + t.numel()).view(t.shape()).copy_(t);
      at += t.numel();
    }
  comm.all_to_allv(out, send_counts, in, recv_counts);
  at = 0;
  for (int r = 0; r < n; ++r)
    for (const Tensor& t : recvs[r]) {
      Tensor dst = t;
      dst.copy_(in.slice(0, at, at + t.numel()).view(t.shape()));
      at += t.numel();
    }
}

// Elements [offset, offset + length) of a contiguous tensor, flat.
Tensor flat_piece(const Tensor& t, int64_t offset, int64_t length) {
  return t.view({-1}).slice(0, offset, offset + length);
}

}  // namespace

DistributedOptimizer::DistributedOptimizer(const std::vector<Param*>& params, const MatrixOptimizerFactory& make_matrix,
                                           const HybridConfig& config, const OptimizerLayout& layout)
    : layout_(layout), config_(config) {
  config_.validate();
  if (layout.dp) {
    dp_size_ = layout.dp->comm().size();
    dp_rank_ = layout.dp->comm().rank();
    zero_ = layout.dp->zero_stage() >= 1;
  }
  if (layout.tp) {
    tp_size_ = layout.tp->size();
    tp_rank_ = layout.tp->rank();
  }
  std::vector<Param*> trainable;
  for (Param* p : params)
    if (p->trainable) trainable.push_back(p);
  if (!trainable.empty()) device_ = trainable.front()->grad.device();  // where the weights and the state live
  for (const Param* p : trainable) {
    const bool tp_only = p->shard.splits.size() == 1 && p->shard.over(Axis::TP);
    ANVIL_CHECK(!p->shard.sharded() || (tp_only && layout.tp), "optimizer: param ", p->name, " is split over ",
                tp_only ? "tp" : "another axis than tp", " but the optimizer's layout ",
                tp_only ? "has no tp communicator" : "handles tp only",
                " — build the optimizer with the model's layout (make_optimizer's OptimizerLayout)");
  }
  exchange_tp_specs(trainable);

  if (make_matrix) {
    routes_ = route_params(trainable, config_.routing, layout.pp);
    for (size_t i = 0; i < trainable.size(); ++i) {
      Param* p = trainable[i];
      if (routes_[i].group == ParamGroup::Matrix) {
        Matrix m;
        m.param = p;
        m.full_shape = logical_shape(*p);
        m.tp_sharded = tp_sharded(p);
        matrices_.push_back(std::move(m));
      } else if (routes_[i].group == ParamGroup::AdamW) {
        adamw_params_.push_back(p);
      }
    }
    name_ = std::string(make_matrix({})->name()) + "+adamw";
  } else {
    adamw_params_ = trainable;
    config_.adamw_lr_ratio = 1.0;
    name_ = "adamw";
  }
  assign_owners(make_matrix);
  if (zero_) sharded_adamw_ = std::make_unique<ShardedAdamW>(*layout.dp, config_.adamw, adamw_params_);
  else adamw_ = std::make_unique<AdamW>(adamw_params_, config_.adamw);

  // Every rank's state bytes, summed into a table over the layout (state is allocated up front).
  Tensor table = Tensor::full({int64_t{dp_size_} * tp_size_}, 0.0, DType::I64);
  table.data<int64_t>()[dp_rank_ * tp_size_ + tp_rank_] = static_cast<int64_t>(state_bytes());
  if (layout.tp) layout.tp->all_reduce(table, ReduceOp::Sum);
  if (layout.dp) layout.dp->comm().all_reduce(table, ReduceOp::Sum);
  bytes_per_rank_.assign(table.data<int64_t>(), table.data<int64_t>() + table.numel());
}

bool DistributedOptimizer::tp_sharded(const Param* p) const {
  return layout_.tp && p->shard.over(Axis::TP);
}

// Every tp rank's runs of every tp-sharded param, in one all_gather; the runs must tile each
// logical dim exactly (a gap or an overlap would silently corrupt the gathered matrices).
void DistributedOptimizer::exchange_tp_specs(const std::vector<Param*>& params) {
  if (!layout_.tp) return;
  std::vector<int64_t> mine;
  for (const Param* p : params)
    if (tp_sharded(p))
      for (const ShardRun& r : p->shard.single(p->name).runs)
        mine.insert(mine.end(), {r.local_start, r.global_start, r.length});
  const int64_t n = static_cast<int64_t>(mine.size());
  Tensor in = Tensor::full({std::max<int64_t>(n, 1)}, 0.0, DType::I64), all = Tensor::empty({std::max<int64_t>(n, 1) * tp_size_}, DType::I64);
  std::copy(mine.begin(), mine.end(), in.data<int64_t>());
  layout_.tp->all_gather(in, all);
  const int64_t* a = all.data<int64_t>();
  int64_t at = 0;
  for (const Param* p : params) {
    if (!tp_sharded(p)) continue;
    std::vector<ShardSpec>& specs = tp_specs_[p];
    const ShardSplit& mine_split = p->shard.single(p->name);
    std::vector<int> covered(mine_split.full_size, 0);
    for (int r = 0; r < tp_size_; ++r) {
      ShardSpec s = p->shard;
      std::vector<ShardRun>& runs = s.splits[0].runs;
      for (size_t k = 0; k < runs.size(); ++k) {
        const int64_t* run = a + r * std::max<int64_t>(n, 1) + at + 3 * static_cast<int64_t>(k);
        runs[k] = {run[0], run[1], run[2]};
        for (int64_t i = run[1]; i < run[1] + run[2] && i < mine_split.full_size; ++i) ++covered[i];
      }
      specs.push_back(std::move(s));
    }
    at += 3 * static_cast<int64_t>(mine_split.runs.size());
    ANVIL_CHECK(std::all_of(covered.begin(), covered.end(), [](int c) { return c == 1; }), "optimizer: the tp shards of ",
                p->name, " do not tile its dim ", mine_split.dim, " of ", mine_split.full_size,
                " exactly — every tp rank must build the same model with the same tp degree");
  }
}

void DistributedOptimizer::assign_owners(const MatrixOptimizerFactory& make_matrix) {
  const int dp_slots = zero_ ? dp_size_ : 1, slots = dp_slots * tp_size_;
  std::vector<size_t> order(matrices_.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return shape_numel(matrices_[a].full_shape) > shape_numel(matrices_[b].full_shape);
  });
  std::vector<int64_t> load(slots, 0);
  for (size_t i : order) {
    const int slot = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    load[slot] += shape_numel(matrices_[i].full_shape);
    matrices_[i].owner_dp = zero_ ? slot / tp_size_ : -1;
    matrices_[i].owner_tp = slot % tp_size_;
  }
  for (Matrix& m : matrices_) {
    owners_.push_back({m.param->name, shape_numel(m.full_shape), m.owner_dp, m.owner_tp});
    if (owns(m)) {
      Param* target = m.param;
      if (m.tp_sharded) {
        m.proxy = std::make_unique<Param>(m.param->name, Tensor::zeros(m.full_shape, DType::F32, device_),
                                          m.param->role);
        target = m.proxy.get();
      }
      m.optimizer = make_matrix({target});
      for (const NamedTensor& t : m.optimizer->state()) m.state_layout.push_back({t.name, t.tensor.shape()});
      if (m.proxy) m.proxy->value = m.proxy->grad = Tensor();  // workspace only during step()
    } else {
      // The state's names and shapes without keeping it: a throw-away instance on a stand-in.
      Param stand_in(m.param->name, Tensor::zeros(m.full_shape), m.param->role);
      for (const NamedTensor& t : make_matrix({&stand_in})->state())
        m.state_layout.push_back({t.name, t.tensor.shape()});
    }
  }
}

void DistributedOptimizer::step(double lr) {
  ++steps_;
  if (sharded_adamw_) sharded_adamw_->update_shard(lr * config_.adamw_lr_ratio);
  else adamw_->step(lr * config_.adamw_lr_ratio);
  if (zero_) gather_grads_to_dp_owners();
  for (Matrix& m : matrices_)
    if (m.proxy) {
      m.proxy->value = Tensor::empty(m.full_shape, DType::F32, device_);
      m.proxy->grad = Tensor::empty(m.full_shape, DType::F32, device_);
    }
  if (layout_.tp) gather_shards_to_tp_owners();
  for (Matrix& m : matrices_)
    if (m.optimizer) m.optimizer->step(lr);
  if (layout_.tp) scatter_values_from_tp_owners();
  for (Matrix& m : matrices_) {
    if (m.proxy) m.proxy->value = m.proxy->grad = Tensor();
    // Mixed precision: a master written by scatter_values_from_tp_owners rounds its value here
    // (the owner's matrix optimizer refreshes an unsharded matrix itself; under ZeRO
    // all_gather_params rounds every value below).
    if (layout_.tp && !zero_ && in_owner_row(m) && (m.tp_sharded || !owns(m))) refresh_value(*m.param);
  }
  if (zero_) {
    scatter_values_from_dp_owners();
    layout_.dp->all_gather_params();
  }
}

void DistributedOptimizer::gather_grads_to_dp_owners() {
  DataParallel& dp = *layout_.dp;
  std::vector<std::vector<Tensor>> sends(dp_size_), recvs(dp_size_);
  for (const Matrix& m : matrices_) {
    const DataParallel::Segment mine = dp.segment_of(m.param, dp_rank_);
    if (mine.length > 0) sends[m.owner_dp].push_back(dp.shard_grad(mine));
    if (m.owner_dp != dp_rank_) continue;
    for (int r = 0; r < dp_size_; ++r) {
      const DataParallel::Segment theirs = dp.segment_of(m.param, r);
      if (theirs.length > 0) recvs[r].push_back(flat_piece(m.param->grad, theirs.param_offset, theirs.length));
    }
  }
  exchange(dp.comm(), device_, sends, recvs);
}

void DistributedOptimizer::gather_shards_to_tp_owners() {
  std::vector<std::vector<Tensor>> sends(tp_size_), recvs(tp_size_);
  std::vector<std::pair<Matrix*, std::vector<Tensor>>> arrivals;  // per owned matrix: (value, grad) per tp rank
  for (Matrix& m : matrices_) {
    if (!in_owner_row(m) || !m.tp_sharded) continue;
    sends[m.owner_tp].push_back(master_weight(*m.param));
    sends[m.owner_tp].push_back(m.param->grad);
    if (!owns(m)) continue;
    std::vector<Tensor> shards;
    for (int r = 0; r < tp_size_; ++r) {
      for (int k = 0; k < 2; ++k) {
        shards.push_back(empty_like(m.param->grad, m.param->grad.shape()));
        recvs[r].push_back(shards.back());
      }
    }
    arrivals.push_back({&m, std::move(shards)});
  }
  exchange(*layout_.tp, device_, sends, recvs);
  for (auto& [m, shards] : arrivals) {
    const std::vector<ShardSpec>& specs = tp_specs_.at(m->param);
    for (int r = 0; r < tp_size_; ++r) {
      place_shard(specs[r], shards[2 * r], m->proxy->value);
      place_shard(specs[r], shards[2 * r + 1], m->proxy->grad);
    }
  }
}

void DistributedOptimizer::scatter_values_from_tp_owners() {
  std::vector<std::vector<Tensor>> sends(tp_size_), recvs(tp_size_);
  for (Matrix& m : matrices_) {
    if (!in_owner_row(m)) continue;
    Tensor& weights = master_weight(*m.param);
    if (m.tp_sharded) {
      recvs[m.owner_tp].push_back(weights);
      if (!owns(m)) continue;
      const std::vector<ShardSpec>& specs = tp_specs_.at(m.param);
      for (int r = 0; r < tp_size_; ++r) {
        Tensor shard = empty_like(weights, weights.shape());
        take_shard(specs[r], m.proxy->value, shard);
        sends[r].push_back(shard);
      }
    } else if (owns(m)) {  // replicated over tp: the owner updated it in place; the others receive it whole
      for (int r = 0; r < tp_size_; ++r)
        if (r != tp_rank_) sends[r].push_back(weights);
    } else {
      recvs[m.owner_tp].push_back(weights);
    }
  }
  exchange(*layout_.tp, device_, sends, recvs);
}

void DistributedOptimizer::scatter_values_from_dp_owners() {
  DataParallel& dp = *layout_.dp;
  std::vector<std::vector<Tensor>> sends(dp_size_), recvs(dp_size_);
  for (const Matrix& m : matrices_) {
    if (m.owner_dp == dp_rank_) {
      for (int r = 0; r < dp_size_; ++r) {
        const DataParallel::Segment theirs = dp.segment_of(m.param, r);
        if (r != dp_rank_ && theirs.length > 0)
          sends[r].push_back(flat_piece(master_weight(*m.param), theirs.param_offset, theirs.length));
      }
    } else {
      const DataParallel::Segment mine = dp.segment_of(m.param, dp_rank_);
      if (mine.length > 0)
        recvs[m.owner_dp].push_back(flat_piece(master_weight(*m.param), mine.param_offset, mine.length));
    }
  }
  exchange(dp.comm(), device_, sends, recvs);
}

Tensor DistributedOptimizer::gather_over_tp(const Param* p, const Tensor& local) {
  const int64_t n = local.numel();
  Tensor all = empty_like(local, {n * tp_size_});
  layout_.tp->all_gather(local.contiguous(), all);
  Tensor full = empty_like(local, logical_shape(*p));
  const std::vector<ShardSpec>& specs = tp_specs_.at(p);
  for (int r = 0; r < tp_size_; ++r) place_shard(specs[r], all.slice(0, r * n, (r + 1) * n).view(local.shape()), full);
  return full;
}

std::vector<NamedTensor> DistributedOptimizer::state() {
  std::vector<NamedTensor> out;
  for (Matrix& m : matrices_) {
    std::map<std::string, Tensor> live;
    if (m.optimizer)
      for (NamedTensor& t : m.optimizer->state()) live[t.name] = t.tensor;
    for (const auto& [name, shape] : m.state_layout) {
      Tensor t = m.optimizer ? live.at(name).contiguous().clone() : Tensor::zeros(shape, DType::F32, device_);
      if (layout_.tp && in_owner_row(m)) layout_.tp->broadcast(t, m.owner_tp);
      if (m.owner_dp >= 0 && dp_size_ > 1) layout_.dp->comm().broadcast(t, m.owner_dp);
      out.push_back({name, t});
    }
  }
  std::unordered_map<std::string, const Param*> owner_of;
  for (const Param* p : adamw_params_) owner_of[p->name + ".exp_avg"] = owner_of[p->name + ".exp_avg_sq"] = p;
  for (NamedTensor& t : sharded_adamw_ ? sharded_adamw_->state() : adamw_->state()) {
    const Param* p = owner_of.at(t.name);
    out.push_back({t.name, tp_sharded(p) ? gather_over_tp(p, t.tensor) : t.tensor.clone()});
  }
  return out;
}

void DistributedOptimizer::load_state(const std::vector<NamedTensor>& full) {
  std::unordered_map<std::string, const Tensor*> by_name;
  for (const NamedTensor& t : full) by_name[t.name] = &t.tensor;
  auto find = [&](const std::string& name, const Shape& shape) -> const Tensor& {
    const auto it = by_name.find(name);
    ANVIL_CHECK(it != by_name.end(), "optimizer state ", name, " is missing");
    ANVIL_CHECK(it->second->shape() == shape, "optimizer state ", name, " has shape ", shape_str(it->second->shape()),
                " but the optimizer holds ", shape_str(shape), " — the checkpoint is of a different model");
    return *it->second;
  };
  for (Matrix& m : matrices_) {
    for (const auto& [name, shape] : m.state_layout) find(name, shape);  // every rank checks every name
    if (!m.optimizer) continue;
    for (NamedTensor& t : m.optimizer->state()) t.tensor.copy_(find(t.name, t.tensor.shape()));
  }
  std::vector<NamedTensor> local;
  for (const Param* p : adamw_params_)
    for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
      const Tensor& f = find(p->name + suffix, logical_shape(*p));
      local.push_back({p->name + suffix, tp_sharded(p) ? take_shard(*p, f) : f});
    }
  if (sharded_adamw_) {
    sharded_adamw_->load_state(local);
  } else {
    std::unordered_map<std::string, const Tensor*> local_by_name;
    for (const NamedTensor& t : local) local_by_name[t.name] = &t.tensor;
    for (NamedTensor& t : adamw_->state()) t.tensor.copy_(*local_by_name.at(t.name));
  }
}

size_t DistributedOptimizer::state_bytes() {
  size_t total = sharded_adamw_ ? sharded_adamw_->state_bytes() : adamw_->state_bytes();
  for (Matrix& m : matrices_)
    if (m.optimizer) total += m.optimizer->state_bytes();
  return total;
}

void DistributedOptimizer::set_step_count(int64_t steps) {
  steps_ = steps;
  if (sharded_adamw_) sharded_adamw_->set_step_count(steps);
  else adamw_->set_step_count(steps);
  for (Matrix& m : matrices_)
    if (m.optimizer) m.optimizer->set_step_count(steps);
}

std::string DistributedOptimizer::describe() const {
  std::ostringstream out;
  out << "optimizer layout: dp=" << dp_size_ << (zero_ ? " (ZeRO: matrices owned per dp rank)" : "") << " x tp=" << tp_size_;
  if (!matrices_.empty()) {
    out << "; each matrix updated whole by one owner (dp rank, tp rank):";
    for (const Owner& o : owners_)
      out << "\n  " << o.name << " -> (" << (o.dp_rank < 0 ? std::string("every") : std::to_string(o.dp_rank)) << ", "
          << o.tp_rank << ")";
  }
  int64_t total = 0;
  out << "\noptimizer state bytes per rank (dp_rank * tp + tp_rank):";
  for (size_t k = 0; k < bytes_per_rank_.size(); ++k) {
    out << (k ? ", " : " ") << bytes_per_rank_[k];
    total += bytes_per_rank_[k];
  }
  out << " (total " << total << ")\n";
  return out.str();
}

}  // namespace anvil
