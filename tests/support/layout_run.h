// The process-grid layout of a multirank layout-equivalence test and the run settings every such
// test trains under: a quiet run of a fixed number of steps that writes only its final checkpoint,
// with the same global micro-batch whatever the layout (so each layout takes the same steps as one
// process). Each test adds its own settings (task, model, optimizer) after these.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace anvil::testing {

struct Layout {
  int dp = 1, tp = 1, pp = 1, sp = 1;
  int zero = 0;          // ZeRO stage over dp
  std::string schedule;  // parallel.pp_schedule when pp > 1; empty: the run config's
  int size() const { return dp * tp * pp * sp; }
  // E.g. "dp2xtp2", "dp2+zero1", "pp2+gpipe"; "single" for one process.
  std::string label() const;
};

// --set values for a run of `steps` steps under layout l in out_dir (checkpoints in
// out_dir/checkpoints, no resume, one thread, no eval or sampling, a checkpoint at the end only, none
// deleted), global_micro_batch sequences per micro-batch over all dp ranks (global_micro_batch / dp
// each) and grad_accum micro-batches a step. warmup_steps: the lr warm-up; nullopt keeps the run
// config's.
std::vector<std::string> layout_run_settings(const Layout& l, const std::string& out_dir, int64_t steps,
                                             int64_t global_micro_batch, int64_t grad_accum,
                                             std::optional<int64_t> warmup_steps = 0);

}  // namespace anvil::testing
