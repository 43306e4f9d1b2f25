// main() for multi-rank GoogleTest binaries run under `mpirun -np N`: every rank
// runs every test; the exit code is non-zero on all ranks when any rank failed.
#include <gtest/gtest.h>
#include <mpi.h>

#include "parallel/mpi_communicator.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  anvil::ensure_mpi_initialized();
  int rank = 0;
  MPI_Comm_rank(anvil::world_comm(), &rank);
  if (rank != 0) {
    // Only failures from other ranks: one full report is enough.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, anvil::world_comm());
  if (rank == 0 && any_failed && !failed) std::printf("a test failed on another rank\n");
  return any_failed;
}
