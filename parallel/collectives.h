// Collectives over small host-side values that the tensor collectives do not cover.
#pragma once
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace anvil {

// Every rank's string, in rank order, on every rank (lengths first, then the padded bytes).
std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& mine);

}  // namespace anvil
