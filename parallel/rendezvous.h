// The shared-file rendezvous: how the ranks of a job find each other when the launcher
// gives Open MPI no way to (srun --mpi=none or --mpi=pmi2 with Debian's Open MPI, which
// wires up from PMIx only). Every task starts MPI alone (a singleton) and they meet
// through a directory all nodes share:
//   1. rank 0 starts `ompi-server` (Open MPI's name server, part of openmpi-bin) and
//      publishes its address in DIR/server.uri; every rank points MPI at it
//      (OMPI_MCA_pmix_server_uri) and calls MPI_Init with the launcher's variables hidden,
//      so Open MPI runs as a singleton instead of refusing a direct launch it cannot serve;
//   2. rank 0 opens an MPI port and writes it to DIR/port;
//   3. ranks join one at a time in rank order (DIR/turn names whose turn it is):
//      MPI_Comm_connect from the newcomer, MPI_Comm_accept from the group, then a merge,
//      so the final communicator's ranks equal the launch ranks.
// Every wait has a deadline (ANVIL_RENDEZVOUS_TIMEOUT seconds, default 120): a task that
// never starts is an error naming it, not a hang.
// Such ranks must not call MPI_Finalize (Open MPI 4.1 hangs finalizing connected
// singletons): finish with a barrier on the joined communicator, then exit.
#pragma once
#include <mpi.h>
#include <sys/types.h>

#include <string>

#include "parallel/launch.h"

namespace anvil {

struct Rendezvous {
  MPI_Comm world = MPI_COMM_NULL;  // the joined communicator, ranks = launch ranks
  pid_t server_pid = -1;           // ompi-server (rank 0 only)
  std::string dir;
};

// The directory for this job step: $ANVIL_RENDEZVOUS_DIR (default ./.anvil-rendezvous, relative
// to the working directory, which under sbatch is the submit directory) / job<id>.step<id>.restart<n>.
std::string rendezvous_dir(const LaunchInfo& info);

// Initialises MPI and joins the `info.size` ranks as described above. Throws anvil::Error
// (naming the directory and the missing rank) when a peer does not show up in time.
Rendezvous rendezvous_join(const LaunchInfo& info, const std::string& dir, double timeout_s);

// Rank 0: stops ompi-server and removes the directory. Called once at exit.
void rendezvous_cleanup(const Rendezvous& r);

}  // namespace anvil
