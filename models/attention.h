// Multi-head / grouped-query causal self-attention with optional RoPE.
#pragma once
#include <memory>
#include <optional>

#include "models/family.h"
#include "models/kv_cache.h"
#include "models/layers.h"
#include "models/tensor_parallel_layers.h"
#include "parallel/sequence_partition.h"

namespace anvil {

// cos/sin tables shared by every attention layer of a model (f32 on the model's device; the
// model owns them and moves them with its params, the layers only read them).
struct RopeTables {
  Tensor cos;  // [max_positions, head_dim / 2]
  Tensor sin;
};
// `scaling` rescales the inverse frequencies first (config.json's rope_scaling). Built on the CPU.
std::shared_ptr<RopeTables> make_rope_tables(int64_t head_dim, int64_t max_positions, double theta,
                                                   const RopeScaling& scaling = {});

// Ulysses sequence parallelism, shared by a model's attention layers (like its RoPE tables):
// the sp communicator and how the sequences of the forward now running are split over it.
// The model sets `part` at the start of each forward (TransformerLM::forward); each layer
// saves what its backward needs in its own Cache, so several micro-batches may be in flight.
struct SequenceParallelContext {
  Communicator* sp = nullptr;
  SequencePartition part;
  int64_t start() const { return part.start(sp->rank()); }  // this rank's first position
};

struct AttentionShape {
  int64_t hidden = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  bool bias = false;       // on q/k/v (c_attn)
  bool out_bias = false;   // on o_proj (c_proj)
  int64_t window = 0;      // sliding window: a query sees the last `window` positions; 0 = all
};

class Attention : public Module {
 public:
  // Fused (GPT-2: one c_attn projection to [q | k | v], output c_proj) or Separate (Llama:
  // q_proj, k_proj, v_proj, output o_proj); the names come from models/family.h.
  using Projection = QkvLayout;
  // `rope` is null for models with learned positions. With a tp communicator the heads are
  // split: each rank holds a contiguous group of num_kv_heads / tp KV heads with their query
  // heads (q/k/v or c_attn column-parallel, each rank's c_attn rows its q|k|v chunks;
  // o_proj / c_proj row-parallel). `shape` is the full model's. With a `sequence` context
  // x holds this sp rank's slice of each sequence: projections and RoPE (at the slice's
  // global positions) stay local, and the causal attention itself runs through Ulysses
  // (parallel/ulysses.h) over the tp-local heads. The output projection writes into the
  // residual stream: Init::ResidualNormal.
  // forward/backward read the Cache's StepContext: explicit position ids rotate q and k at
  // those positions (under sp: the slice's global positions), and document boundaries
  // (mask.segment_ids) keep packed documents from attending to each other. Packed documents
  // under sequence parallelism are refused (Ulysses attends in another layout).
  Attention(const std::string& prefix, const AttentionShape& shape, Projection projection,
            std::shared_ptr<const RopeTables> rope, Communicator* tp = nullptr,
            std::shared_ptr<const SequenceParallelContext> sequence = nullptr);

  Tensor forward(const Tensor& x, Cache& c) override;   // x: [B, T, hidden] (under sp: [B, Tl, hidden])
  Tensor backward(const Tensor& dy, Cache& c) override;
  void collect_params(std::vector<Param*>& out) override;
  void collect_linears(std::vector<LinearWeight*>& out) override;
  // Its input, q/k/v after RoPE, the attention output and its log-sum-exp (under sp: in the
  // head layout over every position, plus the output back in the sequence layout).
  size_t activation_bytes(const ActivationDims& d) const override;

  // Inference with a KV cache: x [B, T, hidden] holds the next T tokens of each row. Without
  // kv.rows (a layer built by hand) they sit at slots and positions start_pos .. start_pos + T - 1.
  // With kv.rows (a KVCache's layer) row b's tokens go to slots rows->lengths[b] .. + T - 1, at
  // the positions rows->positions when defined (else their slots). Their keys and values (after
  // RoPE) are written into kv, then each query attends causally over its row's slots — or, when
  // rows->tree is defined (KVCache::set_tree), over its row's cached slots and its tree ancestors.
  // Saves nothing for backward.
  Tensor forward_cached(const Tensor& x, KVLayer& kv, int64_t start_pos);

  // This rank's shape: the head counts are local under tensor parallelism.
  const AttentionShape& shape() const { return shape_; }

 private:
  // The micro-batch's context checked against this layer (sp group, packed rows under sp).
  const StepContext& step_context(const Cache& c) const;
  void rotate(Tensor& q, Tensor& k, const Tensor& positions, int64_t start) const;
  AttentionShape shape_;
  Projection projection_;
  std::shared_ptr<const RopeTables> rope_;
  std::shared_ptr<const SequenceParallelContext> sequence_;  // null without sequence parallelism
  std::optional<ColumnParallelLinear> qkv_;     // Fused
  std::optional<ColumnParallelLinear> q_, k_, v_;  // Separate
  RowParallelLinear out_;
};

}  // namespace anvil
