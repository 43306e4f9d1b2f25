#include "tests/support/reference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/rng.h"

namespace anvil::testing {

Tensor random_tensor(const Shape& shape, uint32_t stream, float low, float high) {
  Tensor t = Tensor::empty(shape);
  PhiloxStream(1234, stream).fill_uniform(t, low, high);
  return t;
}

Tensor random_ids(const Shape& shape, int32_t vocab, uint32_t stream) {
  Tensor t = Tensor::empty(shape, DType::I32);
  PhiloxStream rng(4321, stream);
  int32_t* p = t.data<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<int32_t>(rng.u32(i) % vocab);
  return t;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  ANVIL_CHECK(a.shape() == b.shape(), "max_abs_diff: ", a.describe(), " vs ", b.describe());
  const auto va = a.to_vector(), vb = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    const double d = std::fabs(static_cast<double>(va[i]) - vb[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

double max_rel_diff(const Tensor& a, const Tensor& b) {
  const double diff = max_abs_diff(a, b);
  double ref = 0;
  for (float v : b.to_vector()) ref = std::max(ref, static_cast<double>(std::fabs(v)));
  if (ref == 0) return diff == 0 ? 0 : INFINITY;
  return diff / ref;
}

Tensor finite_difference_grad(Tensor& x, const std::function<double()>& loss, double eps) {
  ANVIL_CHECK(x.dtype() == DType::F32 && x.is_contiguous(), "finite differences need contiguous f32");
  Tensor grad = Tensor::zeros(x.shape());
  float* p = x.data<float>();
  float* g = grad.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float saved = p[i];
    p[i] = static_cast<float>(saved + eps);
    const double up = loss();
    p[i] = static_cast<float>(saved - eps);
    const double down = loss();
    p[i] = saved;
    g[i] = static_cast<float>((up - down) / (2 * eps));
  }
  return grad;
}

double dot(const Tensor& y, const Tensor& r) {
  const auto vy = y.to_vector(), vr = r.to_vector();
  ANVIL_CHECK(vy.size() == vr.size(), "dot: ", y.describe(), " vs ", r.describe());
  double s = 0;
  for (size_t i = 0; i < vy.size(); ++i) s += static_cast<double>(vy[i]) * vr[i];
  return s;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

void randomize_params(const std::vector<Param*>& params) {
  for (Param* p : params) {
    const uint32_t stream = stream_id(p->name.c_str());
    if (p->role == ParamRole::Vector) {
      const Tensor noise = random_tensor(p->value.shape(), stream, -0.1f, 0.1f);
      for (int64_t i = 0; i < noise.numel(); ++i) p->value.data<float>()[i] += noise.data<float>()[i];
    } else {
      p->value.copy_(random_tensor(p->value.shape(), stream + 1, -0.25f, 0.25f));
    }
  }
}

std::string source_path(const std::string& relative) { return std::string(ANVIL_SOURCE_DIR) + "/" + relative; }

void run_torch_script(const std::string& script, const std::string& args) {
  const std::string cmd = std::string(ANVIL_TORCH_PYTHON) + " " + source_path(script) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  ANVIL_CHECK(pipe != nullptr, "cannot start ", cmd);
  std::string output;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) output.append(buf, n);
  const int status = pclose(pipe);
  ANVIL_CHECK(status == 0, "torch oracle failed (", cmd, "):\n", output);
}

}  // namespace anvil::testing
