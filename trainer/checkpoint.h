// Checkpoints: one directory per save holding one HDF5 file with every param and
// optimizer state tensor at its full logical shape, the run's scalar state (step,
// data position, optimizer step count) and the resolved config. Written under a
// temporary name and renamed when complete, so a killed job never leaves a
// checkpoint that looks whole; `latest_checkpoint` skips anything incomplete.
//
// Layout: <root>/step_00000100/checkpoint.h5
//   /params/<hf name>            f32, the param's shape
//   /optimizer/<state name>      f32 (e.g. model.norm.weight.exp_avg)
//   attributes on /: format_version, step, complete, run_config (YAML), model_config (JSON),
//                    optimizer_name; /state/<key>: int64 counters (data loader, optimizer step, ...)
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "models/param.h"
#include "optim/optimizer.h"

namespace anvil {

struct CheckpointMeta {
  int64_t step = 0;                        // optimizer steps completed
  std::string run_config_yaml;             // the resolved run config
  std::string model_config_json;           // the architecture, Hugging Face fields
  std::string optimizer_name;
  std::map<std::string, int64_t> counters; // data position, optimizer step count, ...
};

inline constexpr const char* kCheckpointFile = "checkpoint.h5";

// Saves into <root>/step_<step> (atomically: temp dir, then rename) and keeps the
// newest `keep` checkpoints (0 = all). Returns the checkpoint directory.
std::string save_checkpoint(const std::string& root, const CheckpointMeta& meta, const std::vector<Param*>& params,
                            Optimizer* optimizer, int64_t keep);
// The same with the optimizer's state already in hand (under ZeRO, Optimizer::state()
// is a collective every rank calls; then one rank writes). meta.optimizer_name names it.
std::string save_checkpoint(const std::string& root, const CheckpointMeta& meta, const std::vector<Param*>& params,
                            const std::vector<NamedTensor>& optimizer_state, int64_t keep);

// The newest complete checkpoint directory under root, or "" if none. Directories
// that are incomplete, unreadable, truncated or corrupted (every tensor is read back and
// checked against the CRC-32C stored with it) are skipped with a warning on stderr.
std::string latest_checkpoint(const std::string& root);

// Reads the metadata only (for `anvil generate`/`eval` to rebuild the model).
CheckpointMeta read_checkpoint_meta(const std::string& dir);

// Restores params (and optimizer state when given) in place; under ZeRO a collective
// (every rank reads the file and keeps its shard of the optimizer state). Every model param must
// be present with the same shape; a mismatch names the tensor, both shapes and the fix.
CheckpointMeta load_checkpoint(const std::string& dir, const std::vector<Param*>& params, Optimizer* optimizer);

}  // namespace anvil
