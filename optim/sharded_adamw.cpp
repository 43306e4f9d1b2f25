#include "optim/sharded_adamw.h"

#include <map>

#include "kernels/optim_kernels.h"

namespace anvil {

ShardedAdamW::ShardedAdamW(DataParallel& dp, const AdamWConfig& config) : ShardedAdamW(dp, config, dp.params()) {}

ShardedAdamW::ShardedAdamW(DataParallel& dp, const AdamWConfig& config, const std::vector<Param*>& params)
    : dp_(dp), decay_rule_({}, config), config_(config) {
  ANVIL_CHECK(dp.zero_stage() >= 1, "ShardedAdamW needs DataParallel with zero_stage 1 or 2, got ", dp.zero_stage());
  const std::unordered_set<const Param*> owned(params.begin(), params.end());
  for (const Param* p : params) dp.flat_offset(p);  // throws for a param outside dp's buckets
  for (Param* p : dp.params())
    if (owned.count(p)) params_.push_back(p);
  int64_t packed = 0;
  for (const DataParallel::Segment& seg : dp.segments()) {
    if (!owned.count(seg.param)) continue;
    pieces_.push_back({seg, packed});
    packed += seg.length;
  }
  exp_avg_ = Tensor::zeros({packed}, DType::F32, dp.device());
  exp_avg_sq_ = Tensor::zeros({packed}, DType::F32, dp.device());
}

void ShardedAdamW::update_shard(double lr) {
  ++steps_;
  kernels::AdamWStep s = adamw_step_constants(config_, lr, steps_);
  for (const Piece& piece : pieces_) {
    const DataParallel::Segment& seg = piece.segment;
    Tensor p = dp_.shard_param(seg);
    const Tensor g = dp_.shard_grad(seg);
    Tensor m = exp_avg_.slice(0, piece.moment_offset, piece.moment_offset + seg.length);
    Tensor v = exp_avg_sq_.slice(0, piece.moment_offset, piece.moment_offset + seg.length);
    s.weight_decay = static_cast<float>(decay_rule_.decay_for(*seg.param));
    s.lr = static_cast<float>(lr * seg.param->lr_scale);
    // p is the f32 master shard under mixed precision; all_gather_params rounds the values.
    kernels::adamw_update(p, g, m, v, s);
  }
}

void ShardedAdamW::step(double lr) {
  update_shard(lr);
  dp_.all_gather_params();
}

std::vector<NamedTensor> ShardedAdamW::state() {
  // Unpack into DataParallel's shard space (zeros elsewhere), gather, cut out the owned params.
  std::vector<Tensor> gathered;
  for (const Tensor* packed : {&exp_avg_, &exp_avg_sq_}) {
    Tensor shard_space = zeros_like(*packed, {dp_.shard_numel()});
    for (const Piece& piece : pieces_) {
      const DataParallel::Segment& seg = piece.segment;
      Tensor dst = shard_space.slice(0, seg.shard_offset, seg.shard_offset + seg.length);
      dst.copy_(packed->slice(0, piece.moment_offset, piece.moment_offset + seg.length));
    }
    gathered.push_back(dp_.gather_shards(shard_space));
  }
  std::vector<NamedTensor> out;
  for (Param* p : params_) {  // registration order and names as AdamW::state()
    const int64_t off = dp_.flat_offset(p), n = p->value.numel();
    out.push_back({p->name + ".exp_avg", gathered[0].slice(0, off, off + n).view(p->value.shape()).clone()});
    out.push_back({p->name + ".exp_avg_sq", gathered[1].slice(0, off, off + n).view(p->value.shape()).clone()});
  }
  return out;
}

void ShardedAdamW::load_state(const std::vector<NamedTensor>& full) {
  std::map<std::string, const Tensor*> by_name;
  for (const NamedTensor& t : full) by_name[t.name] = &t.tensor;
  for (const Piece& piece : pieces_) {
    const DataParallel::Segment& seg = piece.segment;
    for (auto [suffix, into] : {std::pair<const char*, Tensor*>{".exp_avg", &exp_avg_}, {".exp_avg_sq", &exp_avg_sq_}}) {
      const auto it = by_name.find(seg.param->name + suffix);
      ANVIL_CHECK(it != by_name.end(), "optimizer state ", seg.param->name, suffix, " is missing");
      const Tensor src = it->second->contiguous().view({-1}).slice(0, seg.param_offset, seg.param_offset + seg.length);
      Tensor dst = into->slice(0, piece.moment_offset, piece.moment_offset + seg.length);
      dst.copy_(src);
    }
  }
}

}  // namespace anvil
