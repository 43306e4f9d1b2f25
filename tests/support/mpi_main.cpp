// main() for multi-rank GoogleTest binaries run under `mpirun -np N`: every rank
// runs every test; the exit code is non-zero on all ranks when any rank failed.
// Rank 0 prints GoogleTest's normal report; every other rank prints only its failed
// assertions, each prefixed with its rank, so a failure on rank 3 is not lost.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "parallel/mpi_communicator.h"

namespace {

// Prints each failed assertion as `[rank k] file:line: Failure in Suite.Test` and its
// message, every line prefixed, written with one write(2) so that ranks' lines do not
// interleave mid-line.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : prefix_("[rank " + std::to_string(rank) + "] ") {}

  // Remembered here: UnitTest::current_test_info() would take the lock GoogleTest holds
  // while it reports a part result (a deadlock).
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestEnd(const ::testing::TestInfo&) override { test_.clear(); }

  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::ostringstream text;
    text << (result.file_name() ? result.file_name() : "unknown file") << ":" << result.line_number()
         << ": Failure";
    if (!test_.empty()) text << " in " << test_;
    text << "\n" << result.message();
    std::istringstream lines(text.str());
    std::string line, out;
    while (std::getline(lines, line)) out += prefix_ + line + "\n";
    for (size_t done = 0; done < out.size();) {
      const ssize_t n = ::write(STDOUT_FILENO, out.data() + done, out.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
  }

 private:
  std::string prefix_, test_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  anvil::ensure_mpi_initialized();
  int rank = 0, size = 1;
  MPI_Comm_rank(anvil::world_comm(), &rank);
  MPI_Comm_size(anvil::world_comm(), &size);
  if (rank != 0) {
    // One full report (rank 0's) is enough; the other ranks print only their failures.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  std::fflush(stdout);
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any_failed = 0;
  std::fflush(stdout);
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, anvil::world_comm());
  std::vector<int> failed_on(rank == 0 ? size : 0);
  MPI_Gather(&failed, 1, MPI_INT, failed_on.data(), 1, MPI_INT, 0, anvil::world_comm());
  if (rank == 0 && any_failed) {
    std::string ranks;
    for (int r = 0; r < size; ++r)
      if (failed_on[r]) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    std::printf("tests failed on rank(s) %s (each failing rank prints its failures prefixed with [rank k])\n",
                ranks.c_str());
  }
  return any_failed;
}
