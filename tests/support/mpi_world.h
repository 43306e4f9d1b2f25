// The job's world communicator for multi-rank tests (built once, shared by every test in
// the binary), whether this rank is rank 0, and a tiny run every rank of the job shares.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"
#include "tests/support/tiny_run.h"

namespace anvil::testing {

inline std::shared_ptr<Communicator> world() {
  static std::shared_ptr<Communicator> w = MpiCommunicator::world();
  return w;
}
inline bool is_root() { return world()->rank() == 0; }

// make_tiny_run(name) written once, by rank 0 (a collective): every rank gets its directory
// and config path. Include the rank count in `name` so runs at several counts stay apart.
inline TinyRun shared_tiny_run(const std::string& name) {
  TinyRun r;
  if (is_root()) r = make_tiny_run(name);
  world()->barrier();
  r.dir = (std::filesystem::path(::testing::TempDir()) / ("anvil_" + name)).string();
  r.config = r.dir + "/run.yaml";
  return r;
}

}  // namespace anvil::testing
