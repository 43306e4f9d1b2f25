#include "parallel/data_parallel.h"

#include <algorithm>
#include <cmath>

#include "kernels/elementwise.h"

namespace anvil {

DataParallel::DataParallel(std::vector<Param*> trainable, Communicator& comm, const DataParallelConfig& config)
    : params_(std::move(trainable)), comm_(comm), config_(config) {
  ANVIL_CHECK(config.zero_stage >= 0 && config.zero_stage <= 2, "optimizer.zero = ", config.zero_stage,
              " — use 0 (plain data parallelism), 1 (sharded optimizer state) or 2 (and sharded gradients)");
  ANVIL_CHECK(config.bucket_mb > 0, "parallel.bucket_mb = ", config.bucket_mb, " must be positive (e.g. 25)");
  const int dp = comm.size();
  // Every bucket lives on the grads' device; with mixed precision the flat weights are the f32
  // masters and the bf16 values the model reads get their own flat buffer.
  const Device device = params_.empty() ? Device::cpu() : params_.front()->grad.device();
  const bool mixed = !params_.empty() && params_.front()->master.defined();
  for (const Param* p : params_)
    ANVIL_CHECK(p->trainable && p->grad.defined() && p->grad.dtype() == DType::F32 && p->grad.device() == device &&
                    master_weight(*p).dtype() == DType::F32 && master_weight(*p).device() == device &&
                    p->master.defined() == mixed,
                "data parallelism: param ", p->name, " (", p->value.describe(), ", grad ", p->grad.describe(),
                ") must be trainable with f32 weights and gradients on ", device.str(),
                " like the others — frozen params stay outside the gradient buckets; move the whole model once "
                "(TransformerLM::to) before building DataParallel");
  const int64_t capacity = std::max<int64_t>(1, static_cast<int64_t>(config.bucket_mb * 1e6 / sizeof(float)));

  // Buckets over the params in reverse registration order: the order backward finishes them.
  for (size_t k = 0; k < params_.size(); ++k) index_[params_[k]] = k;
  param_bucket_.assign(params_.size(), -1);
  param_offset_.assign(params_.size(), 0);
  int64_t offset = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    if (buckets_.empty() || buckets_.back().numel >= capacity) {
      if (!buckets_.empty()) offset = buckets_.back().begin + buckets_.back().padded;
      buckets_.emplace_back();
      buckets_.back().begin = offset;
    }
    Bucket& b = buckets_.back();
    param_bucket_[k] = static_cast<int>(buckets_.size() - 1);
    param_offset_[k] = b.begin + b.numel;
    b.numel += params_[k]->value.numel();
    b.padded = (b.numel + dp - 1) / dp * dp;
    b.params.push_back(params_[k]);
  }
  for (Bucket& b : buckets_) {
    b.shard = b.padded / dp;
    b.shard_base = shard_numel_;
    shard_numel_ += b.shard;
    flat_numel_ = b.begin + b.padded;
  }

  flat_values_ = Tensor::zeros({flat_numel_}, DType::F32, device);
  flat_grads_ = Tensor::zeros({flat_numel_}, DType::F32, device);
  if (mixed) flat_compute_ = Tensor::zeros({flat_numel_}, params_.front()->value.dtype(), device);
  for (size_t k = 0; k < params_.size(); ++k) {
    Param* p = params_[k];
    const int64_t n = p->value.numel();
    auto view_of = [&](const Tensor& flat) {
      return flat.slice(0, param_offset_[k], param_offset_[k] + n).view(p->value.shape());
    };
    Tensor weights = view_of(flat_values_), grad = view_of(flat_grads_);
    weights.copy_(master_weight(*p));
    grad.copy_(p->grad);
    if (mixed) {
      Tensor value = view_of(flat_compute_);
      value.copy_(p->value);
      p->master = weights;
      p->value = value;
    } else {
      p->value = weights;
    }
    p->grad = grad;
  }
  if (config.zero_stage == 2) reduced_shard_ = Tensor::zeros({shard_numel_}, DType::F32, device);

  // This rank's shard of each bucket, cut at param boundaries (each piece keeps its
  // param's weight decay); padding belongs to no param and gets no segment.
  for (Param* p : params_) {
    const Segment seg = segment_of(p, comm.rank());
    if (seg.length > 0) segments_.push_back(seg);
  }
}

DataParallel::Segment DataParallel::segment_of(const Param* p, int rank) const {
  const auto it = index_.find(p);
  ANVIL_CHECK(it != index_.end(), "data parallelism: param ", p->name, " is not in the gradient buckets");
  ANVIL_CHECK(rank >= 0 && rank < comm_.size(), "data parallelism: rank ", rank, " is outside [0, ", comm_.size(), ")");
  const size_t k = it->second;
  const int bi = param_bucket_[k];
  const Bucket& b = buckets_[bi];
  const int64_t shard_begin = b.begin + rank * b.shard, shard_end = shard_begin + b.shard;
  const int64_t p_begin = param_offset_[k], p_end = p_begin + p->value.numel();
  const int64_t lo = std::max(shard_begin, p_begin), hi = std::max(lo, std::min(shard_end, p_end));
  return {params_[k], bi, b.shard_base + (lo - shard_begin), lo - p_begin, hi - lo};
}

DataParallel::~DataParallel() {
  for (Bucket& b : buckets_)
    if (b.handle) b.handle->wait();
}

int DataParallel::bucket_of(const Param* p) const {
  const auto it = index_.find(p);
  return it == index_.end() ? -1 : param_bucket_[it->second];
}

int64_t DataParallel::flat_offset(const Param* p) const {
  const auto it = index_.find(p);
  if (it != index_.end()) return param_offset_[it->second];
  ANVIL_FAIL("data parallelism: param ", p->name, " is not in the gradient buckets");
}

void DataParallel::set_sync_enabled(bool on) {
  sync_enabled_ = on;
  if (!on) return;
  for (Bucket& b : buckets_) {
    b.pending = static_cast<int>(b.params.size());
    b.launched = false;
  }
  next_launch_ = 0;
  started_in_backward_ = 0;
}

void DataParallel::grads_ready(const std::vector<Param*>& ready) {
  if (!sync_enabled_) return;
  for (const Param* p : ready) {
    const int bi = bucket_of(p);
    if (bi >= 0) --buckets_[bi].pending;  // frozen or foreign params are not ours
  }
  const size_t before = next_launch_;
  launch_ready_buckets();
  started_in_backward_ += static_cast<int>(next_launch_ - before);
}

void DataParallel::launch_ready_buckets() {
  // In index order only, so every rank issues the same collectives in the same order.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending <= 0) launch(buckets_[next_launch_++]);
}

void DataParallel::launch(Bucket& b) {
  for (const Param* p : b.params)  // a rebound grad would silently miss the reduction
    ANVIL_CHECK(p->grad.same_storage(flat_grads_), "data parallelism: the gradient of ", p->name,
                " was reallocated after the buckets were built — keep grads in place (zero them, never reassign)");
  Tensor whole = flat_grads_.slice(0, b.begin, b.begin + b.padded);
  if (config_.zero_stage == 2) {
    Tensor mine = reduced_shard_.slice(0, b.shard_base, b.shard_base + b.shard);
    b.handle = comm_.reduce_scatter_async(whole, mine, ReduceOp::Sum);
  } else {
    b.handle = comm_.all_reduce_async(whole, ReduceOp::Sum);
  }
  b.launched = true;
}

void DataParallel::finish_grad_sync() {
  if (!sync_enabled_) set_sync_enabled(true);  // nothing was reported: reduce everything now
  for (Bucket& b : buckets_) b.pending = 0;
  launch_ready_buckets();
  for (Bucket& b : buckets_) {
    b.handle->wait();
    b.handle.reset();
  }
  sync_enabled_ = false;
  if (config_.average) {
    const float scale = 1.0f / static_cast<float>(comm_.size());
    if (config_.zero_stage == 2) kernels::scale_inplace(reduced_shard_, scale);
    else kernels::scale_inplace(flat_grads_, scale);
  }
}

Tensor DataParallel::shard_grad(int b) {
  const Bucket& bk = buckets_[b];
  if (config_.zero_stage == 2) return reduced_shard_.slice(0, bk.shard_base, bk.shard_base + bk.shard);
  const int64_t begin = bk.begin + comm_.rank() * bk.shard;
  return flat_grads_.slice(0, begin, begin + bk.shard);
}

Tensor DataParallel::shard_param(int b) {
  const Bucket& bk = buckets_[b];
  const int64_t begin = bk.begin + comm_.rank() * bk.shard;
  return flat_values_.slice(0, begin, begin + bk.shard);
}

Tensor DataParallel::shard_grad(const Segment& seg) {
  const int64_t at = seg.shard_offset - buckets_[seg.bucket].shard_base;
  return shard_grad(seg.bucket).slice(0, at, at + seg.length);
}

Tensor DataParallel::shard_param(const Segment& seg) {
  const int64_t at = seg.shard_offset - buckets_[seg.bucket].shard_base;
  return shard_param(seg.bucket).slice(0, at, at + seg.length);
}

double DataParallel::grad_norm() {
  return std::sqrt(grad_sum_squares([](const Param&) { return true; }));
}

double DataParallel::grad_sum_squares(const std::function<bool(const Param&)>& counted) {
  std::vector<Tensor> parts;
  if (config_.zero_stage == 0) {  // the full reduced buffer, identical on every rank
    for (const Param* p : params_)
      if (counted(*p)) parts.push_back(p->grad);
    return kernels::sum_squares(parts);
  }
  for (const Segment& seg : segments_)
    if (counted(*seg.param)) parts.push_back(shard_grad(seg));
  return all_reduce_sum(comm_, kernels::sum_squares(parts));
}

void DataParallel::scale_grads(float scale) {
  if (config_.zero_stage == 0) return kernels::scale_inplace(flat_grads_, scale);
  for (size_t b = 0; b < buckets_.size(); ++b) {
    Tensor g = shard_grad(static_cast<int>(b));
    kernels::scale_inplace(g, scale);
  }
}

double DataParallel::clip_grad_norm(double max_norm) {
  const double norm = grad_norm();
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm))
    scale_grads(static_cast<float>(max_norm / (norm + 1e-6)));  // as optim/clip_grad_norm
  return norm;
}

void DataParallel::all_gather_params() {
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const Bucket& bk = buckets_[b];
    const Tensor mine = shard_param(static_cast<int>(b)).clone();  // all_gather's input may not alias its output
    Tensor whole = flat_values_.slice(0, bk.begin, bk.begin + bk.padded);
    comm_.all_gather(mine, whole);
    // Mixed precision: the f32 masters travel (every rank keeps them whole, so checkpoints and
    // matrix owners read current weights), then the compute copy is rounded from them.
    if (flat_compute_.defined()) {
      Tensor compute = flat_compute_.slice(0, bk.begin, bk.begin + bk.padded);
      compute.copy_(whole);
    }
  }
}

Tensor DataParallel::gather_shards(const Tensor& shard_space) {
  ANVIL_CHECK(shard_space.numel() == shard_numel_ && shard_space.is_contiguous(), "gather_shards: expected ",
              shard_numel_, " contiguous elements, got ", shard_space.describe());
  Tensor flat = zeros_like(flat_grads_, {flat_numel_}, shard_space.dtype());
  for (const Bucket& bk : buckets_) {
    const Tensor mine = shard_space.slice(0, bk.shard_base, bk.shard_base + bk.shard);
    Tensor whole = flat.slice(0, bk.begin, bk.begin + bk.padded);
    comm_.all_gather(mine, whole);
  }
  return flat;
}

std::vector<double> all_reduce_sum(Communicator& comm, const std::vector<double>& values) {
  const int64_t n = static_cast<int64_t>(values.size()), P = comm.size();
  Tensor mine = Tensor::empty({2 * n}), all = Tensor::empty({2 * n * P});
  for (int64_t i = 0; i < n; ++i) {
    const float hi = static_cast<float>(values[i]);
    mine.data<float>()[2 * i] = hi;
    mine.data<float>()[2 * i + 1] = static_cast<float>(values[i] - static_cast<double>(hi));
  }
  comm.all_gather(mine, all);
  std::vector<double> sums(n, 0.0);
  const float* a = all.data<float>();
  for (int64_t r = 0; r < P; ++r)
    for (int64_t i = 0; i < n; ++i)
      sums[i] += static_cast<double>(a[(r * n + i) * 2]) + static_cast<double>(a[(r * n + i) * 2 + 1]);
  return sums;
}

double all_reduce_sum(Communicator& comm, double value) { return all_reduce_sum(comm, std::vector<double>{value})[0]; }

int64_t all_reduce_sum(Communicator& comm, int64_t value) {
  Tensor t = Tensor::full({1}, 0.0, DType::I64);
  t.data<int64_t>()[0] = value;
  comm.all_reduce(t, ReduceOp::Sum);
  return t.data<int64_t>()[0];
}

}  // namespace anvil
