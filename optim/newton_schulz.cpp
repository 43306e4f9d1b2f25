#include "optim/newton_schulz.h"

#include <cmath>
#include <vector>

#include "kernels/linalg.h"

namespace anvil {
namespace {

template <class T>
T round_bf16(T x) {
  return static_cast<T>(bf16_to_float(float_to_bf16(static_cast<float>(x))));
}

// Rounds every element when emulating bf16; a no-op otherwise.
template <class T>
void round_all(std::vector<T>& v, bool bf16) {
  if (!bf16) return;
  for (T& x : v) x = round_bf16(x);
}

}  // namespace

template <class T>
void newton_schulz(const T* g, T* out, int64_t rows, int64_t cols, const NewtonSchulzConfig& cfg) {
  const bool transpose = rows > cols;
  const int64_t r = transpose ? cols : rows, c = transpose ? rows : cols;  // X is r x c, r <= c
  std::vector<T> x(static_cast<size_t>(r * c));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) x[transpose ? j * c + i : i * c + j] = g[i * cols + j];
  round_all(x, cfg.bf16);

  double sum_sq = 0;
  for (T v : x) sum_sq += static_cast<double>(v) * static_cast<double>(v);
  T denom = static_cast<T>(std::sqrt(sum_sq));
  if (cfg.bf16) denom = round_bf16(round_bf16(denom) + static_cast<T>(cfg.eps));
  else denom += static_cast<T>(cfg.eps);
  for (T& v : x) v = v / denom;
  round_all(x, cfg.bf16);

  T a = static_cast<T>(cfg.a), b = static_cast<T>(cfg.b), cc = static_cast<T>(cfg.c);
  if (cfg.bf16 && cfg.bf16_coefficients) {
    a = round_bf16(a);
    b = round_bf16(b);
    cc = round_bf16(cc);
  }
  std::vector<T> A(static_cast<size_t>(r * r)), AA(A.size()), B(A.size()), BX(x.size());
  for (int step = 0; step < cfg.steps; ++step) {
    kernels::host_gemm<T>(false, true, r, r, c, T(1), x.data(), c, x.data(), c, T(0), A.data(), r);
    round_all(A, cfg.bf16);
    kernels::host_gemm<T>(false, false, r, r, r, T(1), A.data(), r, A.data(), r, T(0), AA.data(), r);
    round_all(AA, cfg.bf16);
    for (size_t i = 0; i < B.size(); ++i)
      B[i] = cfg.bf16 ? round_bf16(round_bf16(b * A[i]) + round_bf16(cc * AA[i])) : b * A[i] + cc * AA[i];
    kernels::host_gemm<T>(false, false, r, c, r, T(1), B.data(), r, x.data(), c, T(0), BX.data(), c);
    round_all(BX, cfg.bf16);
    for (size_t i = 0; i < x.size(); ++i) x[i] = cfg.bf16 ? round_bf16(round_bf16(a * x[i]) + BX[i]) : a * x[i] + BX[i];
  }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[i * cols + j] = x[transpose ? j * c + i : i * c + j];
}

template void newton_schulz<float>(const float*, float*, int64_t, int64_t, const NewtonSchulzConfig&);
template void newton_schulz<double>(const double*, double*, int64_t, int64_t, const NewtonSchulzConfig&);

Tensor newton_schulz(const Tensor& g, const NewtonSchulzConfig& config) {
  ANVIL_CHECK(g.dim() == 2 && g.dtype() == DType::F32 && g.device().is_cpu(), "newton_schulz: got ",
              g.describe(), " but needs a 2-D f32 CPU matrix");
  Tensor src = g.contiguous();
  Tensor out = Tensor::empty(g.shape());
  newton_schulz<float>(src.data<float>(), out.data<float>(), g.size(0), g.size(1), config);
  return out;
}

}  // namespace anvil
