// Checkpoints: one directory per save holding one HDF5 file with every param and
// optimizer state tensor at its full logical shape, the run's scalar state (step,
// data position, optimizer step count) and the resolved config. Written under a
// temporary name and renamed when complete, so a killed job never leaves a
// checkpoint that looks whole; `latest_checkpoint` skips anything incomplete.
//
// Weights are saved from each param's f32 master (master_weight: the value itself in f32
// runs), copied to the host; loading writes the masters, and the caller rounds the values
// (refresh_values; the one-process load_checkpoint below does it). So a bf16 GPU run and an
// f32 CPU run read and write the same files.
//
// Layout-free and parallel: with a communicator, every rank opens the file together
// through MPI-IO (parallel HDF5), all datasets are created collectively at their full
// logical shapes, and each rank writes only its hyperslabs (a tensor-parallel shard
// writes its slice of the split dim; a replica is written by one rank). Loading reads
// each rank's slice of the same datasets, so any layout resumes any other.
//
// Layout: <root>/step_00000100/checkpoint.h5
//   /params/<hf name>            f32, the param's logical shape
//   /optimizer/<state name>      f32 (e.g. model.norm.weight.exp_avg)
//   attributes on /: format_version, step, complete, run_config (YAML), model_config (JSON),
//                    optimizer_name; /state/<key>: int64 counters (data loader, optimizer step, ...)
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/param.h"
#include "optim/optimizer.h"
#include "parallel/communicator.h"

namespace anvil {

struct CheckpointMeta {
  int64_t step = 0;                        // optimizer steps completed
  std::string run_config_yaml;             // the resolved run config
  std::string model_config_json;           // the architecture, Hugging Face fields
  std::string optimizer_name;
  std::map<std::string, int64_t> counters; // data position, optimizer step count, ...
};

inline constexpr const char* kCheckpointFile = "checkpoint.h5";

// One tensor of a checkpoint as this rank holds it: `local` is the whole logical tensor,
// or (shard.sharded()) this rank's block of it: along each split's dim, laid out by its runs.
struct CheckpointTensor {
  std::string name;
  Tensor local;
  ShardSpec shard;
  bool writer = true;  // false on a replica that another rank writes
  Shape logical() const;
};
struct CheckpointContents {
  std::vector<CheckpointTensor> params;     // /params
  std::vector<CheckpointTensor> optimizer;  // /optimizer (meta.optimizer_name names the optimizer)
};
// Every param whole or as its shard (ShardSpec), each written by this rank.
std::vector<CheckpointTensor> checkpoint_tensors(const std::vector<Param*>& params);

// Saves into <root>/step_<step> (atomically: temp dir, then rename) and keeps the
// newest `keep` checkpoints (0 = all). Returns the checkpoint directory (on every rank).
// With `world` (size > 1) a collective: every rank passes the same meta and its own
// contents; tensors of one name must agree on the logical shape across ranks.
std::string save_checkpoint(const std::string& root, const CheckpointMeta& meta, const CheckpointContents& contents,
                            int64_t keep, Communicator* world = nullptr);
// One process: params (and the optimizer's state when given) as they are.
std::string save_checkpoint(const std::string& root, const CheckpointMeta& meta, const std::vector<Param*>& params,
                            Optimizer* optimizer, int64_t keep);

// The newest complete checkpoint directory under root, or "" if none. Directories
// that are incomplete, unreadable, truncated or corrupted (every tensor is read back and
// checked against the CRC-32C stored with it) are skipped with a warning on stderr.
std::string latest_checkpoint(const std::string& root);

// Reads the metadata only (for `anvil generate`/`eval` to rebuild the model).
CheckpointMeta read_checkpoint_meta(const std::string& dir);

// Reads every tensor of `contents` (its slice, for a shard) into its `local` in place.
// Every tensor must be present with the logical shape; a mismatch names the tensor, both
// shapes and the fix. meta.optimizer_name is checked against `optimizer_name` when
// contents.optimizer is not empty.
CheckpointMeta load_checkpoint(const std::string& dir, CheckpointContents& contents,
                               const std::string& optimizer_name = "");
// One process: restores params (and the optimizer's state when given) in place.
CheckpointMeta load_checkpoint(const std::string& dir, const std::vector<Param*>& params, Optimizer* optimizer);

}  // namespace anvil
