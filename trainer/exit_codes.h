// The exit codes of `anvil train`, one per way a run can end, so that a batch script can tell
// "resume me" from "fix me" (launch/slurm/train.sbatch requeues on kExitPreempted only).
#pragma once

namespace anvil {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;          // bad config, bad file, a bug: fix and rerun
inline constexpr int kExitNumerics = 65;      // the numerics guard stopped the run (guard.on_*: stop)
inline constexpr int kExitPeerLost = 69;      // another rank died or stopped answering
inline constexpr int kExitPreempted = 75;     // SIGTERM/SIGUSR1: a complete checkpoint was written; rerun resumes

}  // namespace anvil
