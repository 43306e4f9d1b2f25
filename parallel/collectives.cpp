#include "parallel/collectives.h"

#include <algorithm>

namespace anvil {

std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& mine) {
  const int n = comm.size();
  Tensor length = Tensor::empty({1}, DType::I64);
  length.data<int64_t>()[0] = static_cast<int64_t>(mine.size());
  Tensor lengths = Tensor::empty({n}, DType::I64);
  comm.all_gather(length, lengths);
  int64_t longest = 1;  // never a zero-sized message
  for (int r = 0; r < n; ++r) longest = std::max(longest, lengths.data<int64_t>()[r]);
  Tensor padded = Tensor::zeros({longest}, DType::U8);
  std::copy(mine.begin(), mine.end(), padded.data<uint8_t>());
  Tensor all = Tensor::empty({n * longest}, DType::U8);
  comm.all_gather(padded, all);
  std::vector<std::string> out;
  for (int r = 0; r < n; ++r) {
    const char* at = reinterpret_cast<const char*>(all.data<uint8_t>()) + r * longest;
    out.emplace_back(at, static_cast<size_t>(lengths.data<int64_t>()[r]));
  }
  return out;
}

}  // namespace anvil
