// Internal to data/safetensors*.cpp: the format's dtype table.
#pragma once
#include <string>

#include "core/dtype.h"

namespace anvil::detail {

// A dtype of the safetensors format. `rank` orders tensors in the data region as the
// safetensors package does (larger rank first), which keeps every tensor aligned.
struct FormatDType {
  const char* name;  // "F32", ...
  size_t bytes;      // element size
  bool supported;    // anvil has a dtype for it
  DType dtype;       // that dtype (BOOL reads as U8)
  int rank;
};

const FormatDType* find_format_dtype(const std::string& name);  // nullptr when unknown
const FormatDType& format_dtype_of(DType dt);
std::string known_format_dtypes();  // "BOOL, U8, ..." for error messages

}  // namespace anvil::detail
