// A minimal named-tensor file used to exchange weights, inputs and results with
// the PyTorch oracle scripts (tests/parity/*.py read and write the same format).
//
// Layout (little-endian): magic "ANVT", u32 count, then per tensor:
//   u32 name_len, name bytes, u32 dtype (0 f32, 1 i32), u32 ndim, i64 dims[ndim],
//   raw data (numel * 4 bytes, row-major).
#pragma once
#include <map>
#include <string>

#include "core/tensor.h"

namespace anvil::testing {

using TensorMap = std::map<std::string, Tensor>;

void write_tensor_file(const std::string& path, const TensorMap& tensors);
TensorMap read_tensor_file(const std::string& path);  // bounds-checked; throws anvil::Error

}  // namespace anvil::testing
