// Param: one named model parameter with its gradient and the metadata that
// optimizers, freezing, adapters and sharding act on.
#pragma once
#include <string>
#include <vector>

#include "core/axis.h"
#include "core/tensor.h"

namespace anvil {

// Which optimizer family a param belongs to (DESIGN.md: matrix -> Muon/SOAP/COSMOS). Output:
// a vocabulary-sized output matrix (an untied lm_head); like embeddings, matrix optimizers
// leave it to AdamW (its rows are per-token, not a hidden transform), which decays it as a matrix.
enum class ParamRole { Matrix, Vector, Embedding, Output };
const char* param_role_name(ParamRole role);

// One contiguous stretch of a split dim: local [local_start, +length) holds logical
// [global_start, +length). A tensor-parallel GPT-2 c_attn holds three (its q, k and v rows).
struct ShardRun {
  int64_t local_start = 0, global_start = 0, length = 0;
};
// One grid axis splitting one logical dim.
struct ShardSplit {
  Axis axis = Axis::TP;
  int dim = 0;                 // the logical dim split over `axis`
  int64_t full_size = 0;       // the logical extent of `dim`
  std::vector<ShardRun> runs;  // in local order; together they cover the local extent
};
// How a param lies over the grid (set by the parallel layers): replicated (no splits), or
// split over one or more axes, each on its own dim (an expert weight [experts, out, in]:
// ep on dim 0 and tp on dim 1). This rank holds the product of every split's runs.
struct ShardSpec {
  std::vector<ShardSplit> splits;
  bool sharded() const { return !splits.empty(); }
  // The split over `axis`, or null when the param is not split over it.
  const ShardSplit* over(Axis axis) const;
  // The split of a single-axis spec; throws naming `what` when there are several or none
  // (for code that handles one split only).
  const ShardSplit& single(const std::string& what) const;
  // Adds a split over another axis and dim; throws when the axis or the dim is split already.
  void add(ShardSplit split);
};

// How init_weights fills a param. The module that creates a param sets its rule (a layer
// knows whether its weight feeds the residual stream; LoRA's B and Medusa's projections will
// say Zeros); init_weights only applies it, with Philox keyed by (seed, param name).
enum class Init {
  Normal,          // N(0, initializer_range)
  ResidualNormal,  // an output projection into the residual stream: N(0, the family's residual std)
  Zeros,
  Ones,
  // U(-1/sqrt(n), 1/sqrt(n)) with n the param's element count: PyTorch's nn.Linear bias default
  // (bound 1/sqrt(fan_in)) for the bias of a square layer (Medusa's ResBlock). Replicated params only.
  SquareLinearBias,
  // U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in the logical size of dim 1: PyTorch's
  // kaiming_uniform_(a=sqrt(5)), which PEFT uses for LoRA's A [r, in]. Drawn by logical element.
  KaimingUniform,
  Keep,            // loaded, never initialised (e.g. a quantized weight's packed integers)
};

// While one is alive on this thread, new Params are built frozen: no gradient buffer (and no
// master) is ever allocated for them, so a model built under it costs its weights only, at
// every moment (load_model builds frozen models this way; torch.no_grad's idea, scoped).
// Params built outside it start trainable, as before.
class FrozenParamScope {
 public:
  FrozenParamScope();
  ~FrozenParamScope();
  FrozenParamScope(const FrozenParamScope&) = delete;
  FrozenParamScope& operator=(const FrozenParamScope&) = delete;

 private:
  bool outer_;  // the state this scope replaced (scopes nest)
};

// Mixed precision (models/README.md): `value` is what the model computes with, in the run's
// compute dtype (f32, or bf16 on a GPU). With a lower-precision value a trainable param also
// holds `master`, the f32 weight the optimizer updates and checkpoints save; the optimizer
// writes the rounded result back into value (refresh_value). In f32 there is no master: the
// value is its own. Gradients are f32 on the value's device whatever the compute dtype.
struct Param {
  std::string name;  // Hugging Face dotted name, e.g. model.layers.3.self_attn.q_proj.weight
  Tensor value;
  Tensor master;     // f32 master weight when value is held in lower precision; undefined otherwise
  Tensor grad;       // f32; undefined when frozen: frozen params cost no gradient memory
  bool trainable = true;
  ParamRole role = ParamRole::Vector;
  // The optimizer steps this param at lr x lr_scale (every optimizer; Medusa-2's heads train at
  // medusa.lr_multiplier x the backbone's lr, and 0 holds a param still: decay included).
  double lr_scale = 1.0;
  ShardSpec shard;
  Init init = Init::Normal;
  // A dense float weight follows the model's compute dtype: move_params casts it and keeps an
  // f32 master when it trains. Anything else (packed integers, quantization scales: set
  // keep_dtype) moves between devices as it is, is never cast and never trains.
  bool keep_dtype = false;
  bool dense_float() const { return !keep_dtype && value.defined() && dtype_is_float(value.dtype()); }

  // A value that is not a dense float (an integer tensor) makes a frozen param.
  Param(std::string name, Tensor value, ParamRole role, Init init = Init::Normal);
  // Freezing drops the gradient buffer; unfreezing allocates a zeroed one (and an f32 master
  // when the value is in lower precision). Only a dense float param can train.
  void set_trainable(bool on);
  void zero_grad();
};

// The f32 weight optimizers update and checkpoints save: the master when there is one, else the value.
Tensor& master_weight(Param& p);
const Tensor& master_weight(const Param& p);
// value := master rounded to value's dtype, after an optimizer or a checkpoint load wrote the
// master. A no-op without a master.
void refresh_value(Param& p);
void refresh_values(const std::vector<Param*>& params);

// Moves params to `device` with values in `compute` (f32 or bf16): a trainable param whose
// compute dtype is not f32 gets an f32 master on the device (copied from its master or value),
// its value becomes the rounded compute-dtype copy, and its gradient f32 zeros on the device.
// A frozen param keeps only the compute-dtype value (nothing updates it). A param that is not
// a dense float keeps its value's dtype and only changes device. Models are built,
// initialised and loaded on the CPU in f32, then moved once; a param already where it should
// be is left untouched (the CPU f32 path allocates nothing).
void move_params(const std::vector<Param*>& params, Device device, DType compute);

// Fills each param by its init rule, the normal draws from Philox keyed by (seed, param name)
// and indexed by logical element, so a shard holds exactly its slice of the single-process
// tensor (layout-independent). Normal: N(0, std); ResidualNormal: N(0, residual_std).
void init_params(const std::vector<Param*>& params, uint64_t seed, float std, float residual_std);

// The split of a dim of logical extent `full` split into `parts` (e.g. GPT-2's q|k|v sizes,
// or {full} for a plain split), each part evenly over `degree` ranks; `rank` holds its
// chunk of every part, concatenated in part order. Throws when a part does not divide.
ShardSplit even_split(Axis axis, int dim, const std::vector<int64_t>& parts, int rank, int degree,
                      const std::string& what);
// The same as a single-axis spec (add() more splits for a multi-axis one).
ShardSpec even_shard(Axis axis, int dim, const std::vector<int64_t>& parts, int rank, int degree,
                     const std::string& what);

// The full logical shape: the local shape with every split dim restored.
Shape logical_shape(const ShardSpec& spec, Shape local);
Shape logical_shape(const Param& p);
// This rank's shard of a full logical tensor, as a new tensor of the param's local shape
// (for loading checkpoints and for tests); a replicated param gets a copy of `full`.
Tensor take_shard(const Param& p, const Tensor& full);
// Writes a local shard into its place in a full logical tensor (the inverse of take_shard).
void place_shard(const Param& p, const Tensor& local, Tensor& full);
// The same for any rank's shard spec (e.g. another tp rank's, when gathering a whole tensor):
// `local` has the shard's shape, `full` the logical one; a replicated spec copies the whole tensor.
void take_shard(const ShardSpec& spec, const Tensor& full, Tensor& local);
void place_shard(const ShardSpec& spec, const Tensor& local, Tensor& full);

}  // namespace anvil
