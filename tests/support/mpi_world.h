// The job's world communicator for multi-rank tests (built once, shared by every test in
// the binary), and whether this rank is rank 0.
#pragma once
#include <memory>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

namespace anvil::testing {

inline std::shared_ptr<Communicator> world() {
  static std::shared_ptr<Communicator> w = MpiCommunicator::world();
  return w;
}
inline bool is_root() { return world()->rank() == 0; }

}  // namespace anvil::testing
