// Preemption: SIGTERM and SIGUSR1 (what Slurm sends before it kills a job, and what
// `scancel --signal` and `#SBATCH --signal` deliver) ask the run to stop cleanly. The handler
// only records the request; the trainer checks it after every step, and since a signal may
// reach one rank only, the ranks agree through a collective (any rank's request stops all of
// them at the same step). They then write a complete checkpoint and exit with
// kExitPreempted (trainer/exit_codes.h). A second signal while stopping changes nothing.
#pragma once

namespace anvil {

// Installs the handlers for SIGTERM and SIGUSR1 (idempotent).
void install_preemption_handlers();
// The signal received (SIGTERM or SIGUSR1), or 0.
int preemption_signal();
// For tests: forget a recorded signal.
void reset_preemption();
// "SIGTERM", "SIGUSR1", or "signal N".
const char* signal_name(int sig);

}  // namespace anvil
