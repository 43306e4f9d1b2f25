#include "optim/sharded_adamw.h"

#include <map>

#include "kernels/optim_kernels.h"

namespace anvil {

ShardedAdamW::ShardedAdamW(DataParallel& dp, const AdamWConfig& config)
    : dp_(dp), decay_rule_({}, config), config_(config) {
  ANVIL_CHECK(dp.zero_stage() >= 1, "ShardedAdamW needs DataParallel with zero_stage 1 or 2, got ", dp.zero_stage());
  exp_avg_ = Tensor::zeros({dp.shard_numel()});
  exp_avg_sq_ = Tensor::zeros({dp.shard_numel()});
}

void ShardedAdamW::step(double lr) {
  ++steps_;
  kernels::AdamWStep s = adamw_step_constants(config_, lr, steps_);
  std::vector<Tensor> grads, params;
  for (size_t b = 0; b < dp_.buckets().size(); ++b) {
    grads.push_back(dp_.shard_grad(static_cast<int>(b)));
    params.push_back(dp_.shard_param(static_cast<int>(b)));
  }
  for (const DataParallel::Segment& seg : dp_.segments()) {
    const int64_t in_bucket = seg.shard_offset - dp_.buckets()[seg.bucket].shard_base;
    Tensor p = params[seg.bucket].slice(0, in_bucket, in_bucket + seg.length);
    const Tensor g = grads[seg.bucket].slice(0, in_bucket, in_bucket + seg.length);
    Tensor m = exp_avg_.slice(0, seg.shard_offset, seg.shard_offset + seg.length);
    Tensor v = exp_avg_sq_.slice(0, seg.shard_offset, seg.shard_offset + seg.length);
    s.weight_decay = static_cast<float>(decay_rule_.decay_for(*seg.param));
    kernels::adamw_update(p, g, m, v, s);
  }
  dp_.all_gather_params();
}

std::vector<NamedTensor> ShardedAdamW::state() {
  const Tensor m = dp_.gather_shards(exp_avg_), v = dp_.gather_shards(exp_avg_sq_);
  std::vector<NamedTensor> out;
  for (Param* p : dp_.params()) {  // registration order and names as AdamW::state()
    const int64_t off = dp_.flat_offset(p), n = p->value.numel();
    out.push_back({p->name + ".exp_avg", m.slice(0, off, off + n).view(p->value.shape()).clone()});
    out.push_back({p->name + ".exp_avg_sq", v.slice(0, off, off + n).view(p->value.shape()).clone()});
  }
  return out;
}

void ShardedAdamW::load_state(const std::vector<NamedTensor>& full) {
  std::map<std::string, const Tensor*> by_name;
  for (const NamedTensor& t : full) by_name[t.name] = &t.tensor;
  for (const DataParallel::Segment& seg : dp_.segments()) {
    for (auto [suffix, into] : {std::pair<const char*, Tensor*>{".exp_avg", &exp_avg_}, {".exp_avg_sq", &exp_avg_sq_}}) {
      const auto it = by_name.find(seg.param->name + suffix);
      ANVIL_CHECK(it != by_name.end(), "optimizer state ", seg.param->name, suffix, " is missing");
      const Tensor src = it->second->contiguous().view({-1}).slice(0, seg.param_offset, seg.param_offset + seg.length);
      Tensor dst = into->slice(0, seg.shard_offset, seg.shard_offset + seg.length);
      dst.copy_(src);
    }
  }
}

}  // namespace anvil
