// Tensor-parallel regions: the conjugate collective pairs every sharded layer is composed
// of (Megatron's f and g), each named once with its forward and backward half, and the
// vocab-parallel cross-entropy. A null communicator means no tensor parallelism: every
// collective is then a no-op and every helper does exactly the single-process work.
#pragma once
#include <memory>
#include <vector>

#include "core/param.h"
#include "parallel/communicator.h"

namespace anvil {

// f: enters a tensor-parallel region whose ranks all read the same (replicated) input.
// Forward is the identity; backward sums the ranks' partial input gradients.
struct CopyToTensorParallelRegion {
  static const Tensor& forward(Communicator* tp, const Tensor& x) { return x; }
  // Starts the all-reduce of dx in place; the caller computes weight gradients while it
  // is in flight (Megatron's overlap), then waits. A finished handle when tp is null.
  static std::unique_ptr<CommHandle> backward_start(Communicator* tp, Tensor& dx);
};

// g: leaves a region whose ranks hold partial sums of the output (row-parallel output,
// vocab-parallel embedding). Forward all-reduces; backward is the identity.
struct ReduceFromTensorParallelRegion {
  static void forward(Communicator* tp, Tensor& y);  // in place
  static const Tensor& backward(Communicator* tp, const Tensor& dy) { return dy; }
};

// Gathers last-dim shards [..., n] into [..., tp * n] (rank r's at [r*n, (r+1)*n));
// backward keeps this rank's chunk of the gradient.
struct GatherFromTensorParallelRegion {
  static Tensor forward(Communicator* tp, const Tensor& x);
  static Tensor backward(Communicator* tp, const Tensor& dy);
};

// Splits [..., tp * n] into this rank's [..., n] chunk; backward gathers the gradient.
struct ScatterToTensorParallelRegion {
  static Tensor forward(Communicator* tp, const Tensor& x);
  static Tensor backward(Communicator* tp, const Tensor& dy);
};

// Softmax cross-entropy over logits sharded by vocabulary: this rank's logits [N, Vs] are
// columns [vocab_start, vocab_start + Vs) of rows of `vocab_size`. The global row max and
// sum of exponentials come from all-reduces (two, the second packing the target logit,
// which only its owning rank contributes), so no rank ever holds a full-vocabulary row.
// Backward is local. With tp null this is kernels::cross_entropy_forward/backward.
struct VocabParallelCrossEntropy {
  // losses[i] = lse[i] - logit[target] (0 when ignored), lse[i] the global log-sum-exp.
  // Returns the number of rows whose target is not ignore_index. Targets must lie in
  // [0, vocab_size) or be ignore_index (else an Error naming the row).
  static int64_t forward(Communicator* tp, const Tensor& logits, int64_t vocab_start, int64_t vocab_size,
                         const Tensor& targets, int ignore_index, Tensor& losses, Tensor& lse);
  // dlogits = grad_scale * (softmax - onehot) on this shard; may alias logits.
  static void backward(Communicator* tp, const Tensor& logits, int64_t vocab_start, const Tensor& targets,
                       const Tensor& lse, int ignore_index, float grad_scale, Tensor& dlogits);
};

// The first vocabulary id of this rank's shard when `vocab_size` is split evenly over tp.
int64_t vocab_shard_start(Communicator* tp, int64_t vocab_size);


}  // namespace anvil
