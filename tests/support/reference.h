// Test helpers: random tensors, relative-error measures and central finite differences.
#pragma once
#include <functional>
#include <string>

#include "core/tensor.h"
#include "core/param.h"

namespace anvil::testing {

// A tensor of uniform values in [low, high) drawn from Philox stream `stream`.
Tensor random_tensor(const Shape& shape, uint32_t stream, float low = -1.0f, float high = 1.0f);
// Random token ids in [0, vocab).
Tensor random_ids(const Shape& shape, int32_t vocab, uint32_t stream);

// max|a - b| / max|b| (b is the reference); 0 when both are all zero.
double max_rel_diff(const Tensor& a, const Tensor& b);
double max_abs_diff(const Tensor& a, const Tensor& b);

// d loss / d x by central differences, perturbing each element of x in place
// (restored afterwards). loss() is evaluated in double by the caller.
Tensor finite_difference_grad(Tensor& x, const std::function<double()>& loss, double eps = 1e-3);

// sum(y * r) in double: turns a tensor output into a scalar loss with a random
// cotangent r, so dL/dy = r.
double dot(const Tensor& y, const Tensor& r);

// The message of the anvil::Error that `f` throws; "(no error)" when it does not throw.
std::string error_of(const std::function<void()>& f);

// Random weights well away from a trivial init, for parity tests: vectors (norm
// gains, biases) get uniform noise in [-0.1, 0.1) added, matrices and embeddings
// are redrawn uniform in [-0.25, 0.25), each from a stream named after the param.
void randomize_params(const std::vector<Param*>& params);

// Where the PyTorch oracle scripts live, and the interpreter that sees Debian's torch.
std::string source_path(const std::string& relative);
// Runs `python script args...` with the torch interpreter; throws with its output on failure.
void run_torch_script(const std::string& script, const std::string& args);

}  // namespace anvil::testing
