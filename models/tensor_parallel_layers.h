// Tensor-parallel layers (Megatron-Core's tensor_parallel layers), each a local computation
// composed with the conjugate regions of parallel/tensor_parallel.h. Params keep their Hugging
// Face names, hold this rank's shard (local shapes) and carry ShardSpec{TP, dim} with the
// logical extent and slice offsets. The linear layers' weights are LinearWeights. Built with a null tp communicator each is exactly the
// single-device layer (same kernels in the same order, no copies).
#pragma once
#include <string>
#include <vector>

#include "models/linear_weight.h"
#include "models/module.h"
#include "parallel/tensor_parallel.h"

namespace anvil {

// y = x W^T + b with W [out, in] split by rows: each rank holds out/tp rows (and bias
// entries) and produces its [..., out/tp] slice of y, which stays sharded. The input is
// replicated (f: identity forward, all-reduce of dx backward).
class ColumnParallelLinear : public Module {
 public:
  // `parts`: sub-blocks of the output dim split separately (GPT-2's c_attn: {q, k, v}
  // sizes), so this rank's rows are its chunk of each part, in order; empty = one part.
  ColumnParallelLinear(const std::string& name, int64_t in_features, int64_t out_features, bool bias,
                       Communicator* tp, const std::vector<int64_t>& parts = {}, Init init = Init::Normal);
  // A layer on another module's weight shard (the tied LM head on the vocab-parallel
  // embedding): it owns no params, and its gradient accumulates into that weight's.
  ColumnParallelLinear(Param& tied_weight, Communicator* tp);

  Tensor forward(const Tensor& x, Cache& c) override;   // x: [..., in] -> [..., out/tp]
  Tensor backward(const Tensor& dy, Cache& c) override; // returns the full (reduced) dx
  Tensor infer(const Tensor& x) override;
  void collect_params(std::vector<Param*>& out) override;  // none when tied
  void collect_linears(std::vector<LinearWeight*>& out) override;  // none when tied
  size_t activation_bytes(const ActivationDims& d) const override;  // its input

  // The halves of backward, for layers that read one input (column_parallel_backward). `c`: the
  // forward's cache (its step context carries the adapter's dropout key).
  Tensor input_grad(const Tensor& dy, const Cache& c) const;  // this rank's partial dx = dy W_local
  void param_grads(const Tensor& dy, Cache& c);  // dW += dy^T x, db += sum dy; clears c

  LinearWeight& linear() { return linear_; }
  const LinearWeight& linear() const { return linear_; }
  Param& weight() { return linear_.weight(); }
  const Param& weight() const { return linear_.weight(); }
  Param& bias() { return linear_.bias(); }
  bool has_bias() const { return linear_.has_bias(); }
  Communicator* tp() const { return tp_; }

 private:
  Communicator* tp_;
  LinearWeight linear_;
};

// Backward of column-parallel layers that read the same input (q/k/v, gate/up): sums their
// partial input gradients, starts the one all-reduce of the sum, computes every weight
// gradient while it is in flight, then waits. Returns the full dx.
Tensor column_parallel_backward(const std::vector<ColumnParallelLinear*>& layers, const std::vector<Tensor>& dys,
                                const std::vector<Cache*>& caches);

// y = x W^T + b with W [out, in] split by columns: each rank holds in/tp columns and reads
// its [..., in/tp] shard of x; the partial products are all-reduced (g) and the replicated
// bias is added once, after the reduction. Backward is local (dy is replicated).
class RowParallelLinear : public Module {
 public:
  RowParallelLinear(const std::string& name, int64_t in_features, int64_t out_features, bool bias, Communicator* tp,
                    Init init = Init::Normal);
  Tensor forward(const Tensor& x, Cache& c) override;   // x: [..., in/tp] -> [..., out]
  Tensor backward(const Tensor& dy, Cache& c) override; // returns this rank's dx shard
  Tensor infer(const Tensor& x) override;
  void collect_params(std::vector<Param*>& out) override;
  void collect_linears(std::vector<LinearWeight*>& out) override;
  size_t activation_bytes(const ActivationDims& d) const override;  // its input shard

  LinearWeight& linear() { return linear_; }
  const LinearWeight& linear() const { return linear_; }
  Param& weight() { return linear_.weight(); }
  Param& bias() { return linear_.bias(); }  // replicated over tp; undefined without bias
  bool has_bias() const { return linear_.has_bias(); }

 private:
  Tensor apply(const Tensor& x2, const Shape& x_shape, const DropoutKey& key) const;
  Communicator* tp_;
  LinearWeight linear_;
};

// Token embedding with the table split by vocabulary rows: each rank holds num/tp rows,
// ids outside its shard give zero rows, and an all-reduce (g) assembles every lookup.
// Backward is local: each rank accumulates only its own rows.
class VocabParallelEmbedding : public Module {
 public:
  VocabParallelEmbedding(const std::string& name, int64_t num_embeddings, int64_t dim, Communicator* tp);
  Tensor forward(const Tensor& ids, Cache& c) override;  // i32 ids -> [..., dim]
  Tensor backward(const Tensor& dy, Cache& c) override;  // returns an undefined dx
  Tensor infer(const Tensor& ids) override;
  void collect_params(std::vector<Param*>& out) override;

  int64_t vocab_start() const { return vocab_start_; }
  int64_t num_embeddings() const { return num_embeddings_; }  // the full vocabulary

  Param weight;  // [num_embeddings / tp, dim]

 private:
  Communicator* tp_;
  int64_t num_embeddings_;
  int64_t vocab_start_;
};

}  // namespace anvil
