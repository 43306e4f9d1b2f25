// Small helpers shared by the kernel unit tests: compare a tensor against a
// double-precision reference vector, bitwise comparisons, thread-count control.
#pragma once
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/tensor.h"

namespace anvil::testing {

// The tensor's elements in logical order, widened to double.
inline std::vector<double> values(const Tensor& t) {
  const std::vector<float> v = t.to_vector();
  return std::vector<double>(v.begin(), v.end());
}

// max|got - want| / max|want| (want is the reference); infinity on NaN or size mismatch.
inline double rel_error(const Tensor& got, const std::vector<double>& want) {
  const std::vector<float> g = got.to_vector();
  if (g.size() != want.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, ref = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double d = std::fabs(g[i] - want[i]);
    if (std::isnan(d)) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, d);
    ref = std::max(ref, std::fabs(want[i]));
  }
  if (ref == 0) return diff == 0 ? 0 : std::numeric_limits<double>::infinity();
  return diff / ref;
}

inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  const std::vector<float> va = a.to_vector(), vb = b.to_vector();
  return va.size() == vb.size() && std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)) == 0;
}

// A tensor that claims to live on cuda:0 (no memory behind it) to check that CPU
// kernels refuse device tensors with a clear message. Only as an operand after the one an
// op dispatches on: with the CUDA backend built, a leading CUDA tensor goes to the GPU.
inline Tensor fake_cuda_tensor(const Shape& shape, DType dtype = DType::F32) {
  static float dummy[1];
  return Tensor::from_external(dummy, shape, dtype, Device::cuda(0));
}

// What a CPU kernel's error says about a CUDA operand: in a CPU-only build that the backend
// is missing; with it built, that the call ran on the CPU and the operands must share a device.
inline const char* cuda_operand_on_cpu_error() {
  return cuda_built() ? "runs on the CPU" : "CUDA backend is not built";
}

// Runs fn with the OpenMP thread count set to n, restoring the previous count.
template <class Fn>
void with_threads(int n, Fn&& fn) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(n);
  fn();
  omp_set_num_threads(saved);
}

// EXPECT_THROW that also checks the message contains every fragment.
template <class Fn>
void expect_error_containing(Fn&& fn, const std::vector<std::string>& fragments) {
  try {
    fn();
    ADD_FAILURE() << "expected anvil::Error, nothing was thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
  }
}

}  // namespace anvil::testing
