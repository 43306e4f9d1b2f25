// Where this process sits in the job, read from the launcher's environment before MPI
// starts: rank, world size, local rank on the node, node index, and which launcher it was.
// launch/README.md lists the variables and the recipes that set them.
//
// Precedence (the first launcher whose variables are present wins):
//   Open MPI's mpirun   OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE,NODE_RANK}
//   srun --mpi=pmix     PMIX_RANK, with the sizes from SLURM_STEP_NUM_TASKS / SLURM_STEP_TASKS_PER_NODE
//   PMI-1/2 (hydra, srun --mpi=pmi2)  PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS
//   srun --mpi=none     SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID, SLURM_NODEID (a job step only:
//                       the batch script itself also has SLURM_PROCID but no SLURM_STEP_ID)
// Debian's Open MPI wires up from PMIx only, so under srun without PMIx (--mpi=none or pmi2) the
// ranks meet through a shared-file rendezvous instead (parallel/rendezvous.h).
#pragma once
#include <functional>
#include <string>

namespace anvil {

enum class Launcher { None, Mpirun, SrunPmix, Pmi, SrunNoPmi };

struct LaunchInfo {
  int rank = 0;
  int size = 1;
  int local_rank = 0;  // among the ranks on this node
  int local_size = 1;
  int node = 0;  // index of this node in the job
  int nodes = 1;
  bool launched = false;  // started by a launcher (even with size 1)
  Launcher launcher = Launcher::None;
  std::string host;
  // Open MPI cannot join these ranks by itself (srun without PMIx): use the file rendezvous.
  bool needs_rendezvous() const { return launcher == Launcher::SrunNoPmi || launcher == Launcher::Pmi; }
};

// Read once from the environment of the process start (later changes do not count), so the
// rendezvous may hide the Slurm variables from MPI_Init without changing what this returns.
LaunchInfo launch_info();

// The same resolution from an explicit environment lookup (for tests).
LaunchInfo resolve_launch(const std::function<const char*(const char*)>& getenv_fn, const std::string& host);

const char* launcher_name(Launcher l);

// One line: "rank 1/4 | local 1/2 | node 0/2 | host gpu01 | launcher srun+pmix".
std::string describe_launch(const LaunchInfo& info);

// Ranks per node from Slurm's compressed list ("2(x3),1"): the count on node `node`, or -1 if
// the list is malformed or too short.
int tasks_on_node(const std::string& tasks_per_node, int node);

}  // namespace anvil
