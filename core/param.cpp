#include "core/param.h"

#include <cmath>

#include "core/rng.h"

namespace anvil {

const char* param_role_name(ParamRole role) {
  switch (role) {
    case ParamRole::Matrix: return "matrix";
    case ParamRole::Vector: return "vector";
    case ParamRole::Embedding: return "embedding";
    case ParamRole::Output: return "output";
  }
  return "?";
}

namespace {
thread_local bool building_frozen = false;  // a FrozenParamScope is alive on this thread
}  // namespace

FrozenParamScope::FrozenParamScope() : outer_(building_frozen) { building_frozen = true; }
FrozenParamScope::~FrozenParamScope() { building_frozen = outer_; }

Param::Param(std::string n, Tensor v, ParamRole r, Init i) : name(std::move(n)), value(std::move(v)), role(r), init(i) {
  if (dense_float() && !building_frozen) set_trainable(true);  // f32 zero grad (and a master for a lower-precision value)
  else if (value.defined()) trainable = false;
}

void Param::set_trainable(bool on) {
  ANVIL_CHECK(!on || !value.defined() || dense_float(), "param '", name, "' holds ", value.describe(),
              ", not a dense float weight, so it cannot train — leave it frozen (train an adapter on it instead)");
  trainable = on;
  if (!on) {
    grad = Tensor();
    return;
  }
  if (!grad.defined()) grad = zeros_like(value, value.shape(), DType::F32);
  if (value.dtype() != DType::F32 && !master.defined()) master = value.to(DType::F32);
}

Tensor& master_weight(Param& p) { return p.master.defined() ? p.master : p.value; }
const Tensor& master_weight(const Param& p) { return p.master.defined() ? p.master : p.value; }

void refresh_value(Param& p) {
  if (p.master.defined()) p.value.copy_(p.master);
}

void refresh_values(const std::vector<Param*>& params) {
  for (Param* p : params) refresh_value(*p);
}

void move_params(const std::vector<Param*>& params, Device device, DType compute) {
  ANVIL_CHECK(compute == DType::F32 || compute == DType::BF16, "move_params: compute dtype ", dtype_name(compute),
              " is not supported — use f32 or bf16");
  for (Param* p : params) {
    if (!p->value.defined()) continue;
    if (!p->dense_float()) {  // packed integers, scales: the same bytes on the new device
      if (p->value.device() != device) p->value = p->value.to(device);
      continue;
    }
    const bool keep_master = p->trainable && compute != DType::F32;
    if (p->value.device() == device && p->value.dtype() == compute && p->master.defined() == keep_master) continue;
    const Tensor source = master_weight(*p);  // the f32 weights: the master when there is one
    if (keep_master) {
      const Tensor moved = source.to(device);
      p->master = moved.dtype() == DType::F32 ? moved : moved.to(DType::F32);
      p->value = p->master.to(compute);
    } else {
      p->master = Tensor();
      const Tensor moved = source.to(device);
      p->value = moved.dtype() == compute ? moved : moved.to(compute);
    }
    if (p->grad.defined()) p->grad = zeros_like(p->value, p->value.shape(), DType::F32);
  }
}

namespace {
// Draws by logical element index, so a shard holds exactly its slice of the single-process
// tensor: each run of the split dim is a contiguous local block, filled by `fill(block, first_index)`.
template <class Fill>
void fill_logical(Param& p, const Fill& fill) {
  if (!p.shard.sharded()) return fill(p.value, 0);
  const ShardSplit& split = p.shard.single(p.name);  // initialising a multi-axis shard is not needed yet
  const Shape& shape = p.value.shape();
  const int d = split.dim;
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= shape[i];
  for (int i = d + 1; i < static_cast<int>(shape.size()); ++i) inner *= shape[i];
  const Tensor v = p.value.view({outer, shape[d], inner});
  for (int64_t o = 0; o < outer; ++o)
    for (const ShardRun& r : split.runs) {
      Tensor block = v.select(0, o).slice(0, r.local_start, r.local_start + r.length);
      fill(block, static_cast<uint64_t>((o * split.full_size + r.global_start) * inner));
    }
}

void fill_normal_logical(const PhiloxStream& rng, Param& p, float std) {
  fill_logical(p, [&](Tensor& t, uint64_t first) { rng.fill_normal(t, 0.0f, std, first); });
}

void fill_kaiming_uniform_logical(const PhiloxStream& rng, Param& p) {
  ANVIL_CHECK(p.value.dim() == 2, p.name, ": Init::KaimingUniform is for a matrix [out, fan_in], got ",
              p.value.describe());
  const float bound = 1.0f / std::sqrt(static_cast<float>(logical_shape(p)[1]));
  fill_logical(p, [&](Tensor& t, uint64_t first) { rng.fill_uniform(t, -bound, bound, first); });
}
}  // namespace

void init_params(const std::vector<Param*>& params, uint64_t seed, float std, float residual_std) {
  for (Param* p : params) {
    const PhiloxStream rng(seed, stream_id(p->name.c_str()));
    switch (p->init) {
      case Init::Normal: fill_normal_logical(rng, *p, std); break;
      case Init::ResidualNormal: fill_normal_logical(rng, *p, residual_std); break;
      case Init::Zeros: p->value.fill_(0.0); break;
      case Init::Ones: p->value.fill_(1.0); break;
      case Init::SquareLinearBias: {
        ANVIL_CHECK(!p->shard.sharded(), p->name, ": Init::SquareLinearBias is for replicated params");
        const float bound = 1.0f / std::sqrt(static_cast<float>(p->value.numel()));
        rng.fill_uniform(p->value, -bound, bound);
        break;
      }
      case Init::KaimingUniform: fill_kaiming_uniform_logical(rng, *p); break;
      case Init::Keep: break;
    }
  }
}

void Param::zero_grad() {
  if (grad.defined()) grad.zero_();
}

const ShardSplit* ShardSpec::over(Axis axis) const {
  for (const ShardSplit& s : splits)
    if (s.axis == axis) return &s;
  return nullptr;
}

const ShardSplit& ShardSpec::single(const std::string& what) const {
  ANVIL_CHECK(splits.size() == 1, what, ": expected a param split over one axis, but it is ",
              splits.empty() ? "replicated" : "split over several axes",
              " — this code handles single-axis shards only; split the param over one axis");
  return splits[0];
}

void ShardSpec::add(ShardSplit split) {
  for (const ShardSplit& s : splits)
    ANVIL_CHECK(s.axis != split.axis && s.dim != split.dim, "ShardSpec: a second split over ", axis_name(split.axis),
                " on dim ", split.dim, " collides with the split over ", axis_name(s.axis), " on dim ", s.dim,
                " — each axis splits its own dim, once");
  splits.push_back(std::move(split));
}

ShardSplit even_split(Axis axis, int dim, const std::vector<int64_t>& parts, int rank, int degree,
                      const std::string& what) {
  ShardSplit s;
  s.axis = axis;
  s.dim = dim;
  int64_t global = 0, local = 0;
  for (int64_t part : parts) {
    ANVIL_CHECK(part % degree == 0, what, ": size ", part, " does not split evenly over ", degree, " ",
                axis_name(axis), " ranks — pick a parallel degree that divides it");
    const int64_t chunk = part / degree;
    s.runs.push_back({local, global + rank * chunk, chunk});
    local += chunk;
    global += part;
  }
  s.full_size = global;
  return s;
}

ShardSpec even_shard(Axis axis, int dim, const std::vector<int64_t>& parts, int rank, int degree,
                     const std::string& what) {
  ShardSpec spec;
  spec.add(even_split(axis, dim, parts, rank, degree, what));
  return spec;
}

Shape logical_shape(const ShardSpec& spec, Shape local) {
  for (const ShardSplit& s : spec.splits) local.at(s.dim) = s.full_size;
  return local;
}

Shape logical_shape(const Param& p) { return logical_shape(p.shard, p.value.shape()); }

namespace {
// Copies every block between the local tensor and the full one, in the given direction: the
// runs of split k, each combined with every block of the splits after it.
void copy_blocks(const ShardSpec& spec, size_t k, const Tensor& local, const Tensor& full, bool to_full) {
  if (k == spec.splits.size()) {
    Tensor dst = to_full ? full : local;
    dst.copy_(to_full ? local : full);
    return;
  }
  const ShardSplit& s = spec.splits[k];
  for (const ShardRun& r : s.runs)
    copy_blocks(spec, k + 1, local.slice(s.dim, r.local_start, r.local_start + r.length),
                full.slice(s.dim, r.global_start, r.global_start + r.length), to_full);
}

void copy_runs(const ShardSpec& spec, const Tensor& local, const Tensor& full, bool to_full) {
  check_shape(full, logical_shape(spec, local.shape()),
              spec.sharded() ? "full logical tensor" : "full tensor of a replicated param");
  copy_blocks(spec, 0, local, full, to_full);
}
}  // namespace

Tensor take_shard(const Param& p, const Tensor& full) {
  Tensor local = Tensor::empty(p.value.shape(), full.dtype(), full.device());
  check_shape(full, logical_shape(p), "full logical tensor");
  copy_runs(p.shard, local, full, false);
  return local;
}

void place_shard(const Param& p, const Tensor& local, Tensor& full) {
  check_shape(local, p.value.shape(), "local shard");
  copy_runs(p.shard, local, full, true);
}

void take_shard(const ShardSpec& spec, const Tensor& full, Tensor& local) { copy_runs(spec, local, full, false); }
void place_shard(const ShardSpec& spec, const Tensor& local, Tensor& full) { copy_runs(spec, local, full, true); }

}  // namespace anvil
