// Data parallelism: gradient synchronisation over the dp communicator in contiguous
// flat buckets, overlapped with backward, and the shard layout ZeRO-1/2 build on.
//
// Layout. The trainable params, in reverse registration order (the order backward
// finishes them), are packed into buckets of about bucket_mb MB; a param is never
// split. Each bucket is padded with zeros to a multiple of dp, and every param's
// value and grad become views into two flat buffers with that layout (as
// Megatron-Core's contiguous grad buffer), so a bucket is reduced in place with no
// packing copy. Rank r's shard is the r-th 1/dp of every bucket (with one bucket:
// the r-th contiguous 1/dp of the whole flat space); uneven sizes are padded, never
// refused.
//
// Overlap. The model reports params whose grads are final (the trainer routes
// TransformerLM's grad-ready callback to grads_ready()); when the last param of bucket k is reported, and
// buckets 0..k-1 have started, bucket k's async all_reduce (ZeRO 0/1) or
// reduce_scatter (ZeRO-2) starts while backward continues. Buckets start in index
// order on every rank, so collectives always match. With gradient accumulation only
// the micro-batch with set_sync_enabled(true) reports; earlier ones just accumulate.
//
// Mixed precision. With bf16 values (Param::master defined) the flat weight buffer holds the
// f32 masters, which ZeRO shards and all_gathers, and a second flat buffer of the params' dtype
// holds the values, rounded from the masters after each all_gather. Buffers live on the grads'
// device.
//
// Reduction. Grads are summed over ranks; with average = true they are then divided
// by dp. The trainer instead scales each rank's loss by the global token count (see
// trainer.cpp), so the sum is exactly the gradient of the mean loss over every
// non-ignored token of the global micro-batch, as one process would compute it.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "core/param.h"
#include "parallel/communicator.h"

namespace anvil {

struct DataParallelConfig {
  double bucket_mb = 25.0;  // bucket capacity in MB of f32 gradients
  int zero_stage = 0;       // 0: all_reduce; 1: all_reduce, sharded optimizer; 2: reduce_scatter
  bool average = false;     // divide the summed grads by dp
};

class DataParallel {
 public:
  struct Bucket {
    int64_t begin = 0;   // first element in the flat buffers
    int64_t numel = 0;   // params' elements (unpadded)
    int64_t padded = 0;  // numel rounded up to a multiple of dp
    int64_t shard = 0;   // padded / dp: each rank's share
    int64_t shard_base = 0;  // where this bucket's shard starts in the rank's shard space
    std::vector<Param*> params;
    int pending = 0;  // params not yet reported in this backward
    bool launched = false;
    std::unique_ptr<CommHandle> handle;
  };
  // One param's piece of this rank's shard: elements [param_offset, +length) of the
  // param, at [shard_offset, +length) of the rank's shard space.
  struct Segment {
    Param* param;
    int bucket;
    int64_t shard_offset;
    int64_t param_offset;
    int64_t length;
  };

  // Rebinds every param's value (and master) and grad to views of the flat buffers (their
  // contents are copied in). `comm` must outlive this object.
  DataParallel(std::vector<Param*> trainable, Communicator& comm, const DataParallelConfig& config);
  ~DataParallel();

  // On the last micro-batch of a step: reported grads start their bucket's reduction.
  void set_sync_enabled(bool on);
  // The model's callback: these params' grads are final for this backward.
  void grads_ready(const std::vector<Param*>& params);
  // Starts every bucket not yet started (all of them when nothing was reported), waits
  // for all, and applies the 1/dp average when configured. Afterwards the reduced
  // grads are in place (ZeRO 0/1: the whole flat grad buffer; ZeRO-2: shard_grad()).
  void finish_grad_sync();

  // The global gradient norm (of the reduced grads, before clipping): ZeRO 0 from the
  // full buffer; ZeRO 1/2 from each rank's shard, summed over ranks (no double counting).
  double grad_norm();
  // The sum of squares of the reduced grads of the params `counted` selects, over the
  // whole dp group, identical on every rank. A model split further (tensor or pipeline
  // parallel) counts each element on one rank only and sums the result over those axes.
  double grad_sum_squares(const std::function<bool(const Param&)>& counted);
  // Multiplies the reduced grads (ZeRO 0/1: the flat buffer; ZeRO-2: this rank's shard) by `scale`.
  void scale_grads(float scale);
  // Scales the reduced grads so their global norm is at most max_norm (as
  // clip_grad_norm); returns the norm before clipping. max_norm <= 0 only measures.
  double clip_grad_norm(double max_norm);

  // ZeRO: this rank's views of bucket b's shard: reduced grads and params (the f32 masters
  // under mixed precision).
  Tensor shard_grad(int b);
  Tensor shard_param(int b);
  // The same views cut to one segment of this rank's shard (segments(), or segment_of(p, rank)
  // for this rank).
  Tensor shard_grad(const Segment& seg);
  Tensor shard_param(const Segment& seg);
  // After each rank updated its shard of the params: all_gather them into every rank (and
  // round the compute copies from the gathered masters).
  void all_gather_params();
  // All_gathers a per-rank shard-space tensor (shard_numel() elements) into a flat
  // tensor of flat_numel() elements with the params' layout.
  Tensor gather_shards(const Tensor& shard_space);
  // The flat offset of a param (its view starts there) and the segments of my shard.
  int64_t flat_offset(const Param* p) const;
  const std::vector<Segment>& segments() const { return segments_; }
  // The piece of p that dp rank `rank`'s shard holds (length 0 when none; shard_offset is in
  // that rank's shard space): for optimizers that move whole params between shard owners.
  Segment segment_of(const Param* p, int rank) const;

  int64_t flat_numel() const { return flat_numel_; }
  int64_t shard_numel() const { return shard_numel_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  const std::vector<Param*>& params() const { return params_; }  // registration order
  Communicator& comm() const { return comm_; }
  Device device() const { return flat_grads_.device(); }
  int zero_stage() const { return config_.zero_stage; }
  // Buckets of the last synchronised step whose reduction started from grads_ready,
  // i.e. during backward rather than in finish_grad_sync (tests check the hook is wired).
  int buckets_started_in_backward() const { return started_in_backward_; }

 private:
  void launch_ready_buckets();
  void launch(Bucket& b);
  int bucket_of(const Param* p) const;

  std::vector<Param*> params_;
  Communicator& comm_;
  DataParallelConfig config_;
  std::vector<Bucket> buckets_;
  std::unordered_map<const Param*, size_t> index_;  // param -> its index in params_
  std::vector<int> param_bucket_;        // per params_ index
  std::vector<int64_t> param_offset_;    // flat offset per params_ index
  std::vector<Segment> segments_;
  Tensor flat_values_, flat_grads_;  // f32: the params' weights (masters when mixed) and grads
  Tensor flat_compute_;              // mixed precision: the values the model reads; undefined otherwise
  Tensor reduced_shard_;  // ZeRO-2: this rank's reduced grads, shard space
  int64_t flat_numel_ = 0, shard_numel_ = 0;
  size_t next_launch_ = 0;
  int started_in_backward_ = 0;
  bool sync_enabled_ = false;
};

// Sum of one double over every rank of `comm`, identical on every rank and accurate
// to ~1e-14: each value travels as an f32 (hi, lo) pair and is summed in double in
// rank order (the MPI backend reduces f32 only).
double all_reduce_sum(Communicator& comm, double value);
// The same for several values at once.
std::vector<double> all_reduce_sum(Communicator& comm, const std::vector<double>& values);
int64_t all_reduce_sum(Communicator& comm, int64_t value);

}  // namespace anvil
