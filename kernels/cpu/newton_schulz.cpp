// Newton–Schulz on the CPU: three OpenBLAS gemm calls per iteration (sgemm for
// float, dgemm for double), the elementwise passes in OpenMP loops, and the bf16
// emulation as a rounding after every op.
#include "kernels/newton_schulz.h"

#include <cmath>
#include <utility>
#include <vector>

#include "core/allocator.h"
#include "kernels/backend.h"
#include "kernels/cpu/common.h"
#include "kernels/linalg.h"

namespace anvil::kernels {
namespace {

constexpr const char* kOp = "newton_schulz";

// Workspace from cpu_allocator(), so memory stats and tests see it.
template <class T>
class Workspace {
 public:
  explicit Workspace(int64_t n)
      : bytes_(static_cast<size_t>(n) * sizeof(T)), p_(static_cast<T*>(cpu_allocator().allocate(bytes_))) {}
  ~Workspace() { cpu_allocator().deallocate(p_, bytes_); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  T* data() const { return p_; }

 private:
  size_t bytes_;
  T* p_;
};

template <class T>
T round_bf16(T x) {
  return static_cast<T>(bf16_to_float(float_to_bf16(static_cast<float>(x))));
}

template <class Fn>
void for_each_index(int64_t n, Fn&& fn) {
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelMin)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

template <class T>
void copy(const T* src, T* dst, int64_t n) {
  for_each_index(n, [&](int64_t i) { dst[i] = src[i]; });
}

template <class T>
void round_all(T* x, int64_t n) {
  for_each_index(n, [&](int64_t i) { x[i] = round_bf16(x[i]); });
}

// Sum of squares in double over fixed 8192-element tiles added in tile order: the
// result does not depend on the thread count (the tiling of kernels::sum_squares).
template <class T>
double sum_of_squares(const T* x, int64_t n) {
  constexpr int64_t kTile = 8192;
  const int64_t tiles = (n + kTile - 1) / kTile;
  std::vector<double> partial(static_cast<size_t>(tiles), 0.0);
#pragma omp parallel for schedule(static) if (n >= cpu::kParallelMin)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t j1 = std::min(n, (t + 1) * kTile);
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = t * kTile; j < j1; ++j) s += static_cast<double>(x[j]) * static_cast<double>(x[j]);
    partial[t] = s;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace

template <class T>
void newton_schulz(const T* g, T* out, int64_t rows, int64_t cols, const NewtonSchulzConfig& cfg) {
  ANVIL_CHECK(rows >= 0 && cols >= 0, kOp, ": shape [", rows, ", ", cols, "] is negative");
  ANVIL_CHECK(cfg.steps >= 0, kOp, ": steps = ", cfg.steps, " must be >= 0");
  const int64_t n = rows * cols;
  if (n == 0) return;
  const bool bf16 = cfg.bf16;
  // The reference transposes a tall X so that the Gram matrix is the smaller one; here
  // the tall case runs A = X^T X and X = a X + X B instead: the transposed iteration
  // without the copies. B is symmetric, so X B = (B X^T)^T: the same iteration as torch's
  // transposed evaluation, rounded at the same points
  // (CosmosParity.Bf16NewtonSchulzMatchesRoundedReference runs a tall 64 x 48 input).
  const bool tall = rows > cols;
  const int64_t k = tall ? cols : rows, inner = tall ? rows : cols;

  // X = G / (||G||_F + eps), written into out (which may be g).
  if (bf16) {
    for_each_index(n, [&](int64_t i) { out[i] = round_bf16(g[i]); });
    const T norm = static_cast<T>(std::sqrt(sum_of_squares(out, n)));
    const T denom = round_bf16(round_bf16(norm) + static_cast<T>(cfg.eps));
    for_each_index(n, [&](int64_t i) { out[i] = round_bf16(out[i] / denom); });
  } else {
    const double norm = std::sqrt(sum_of_squares(g, n));
    const T scale = static_cast<T>(1.0 / (norm + cfg.eps));
    for_each_index(n, [&](int64_t i) { out[i] = g[i] * scale; });
  }

  T a = static_cast<T>(cfg.a), b = static_cast<T>(cfg.b), c = static_cast<T>(cfg.c);
  if (bf16 && cfg.bf16_coefficients) {
    a = round_bf16(a);
    b = round_bf16(b);
    c = round_bf16(c);
  }
  Workspace<T> other(n), gram(k * k), poly(k * k);
  T* x = out;
  T* y = other.data();
  T* A = gram.data();
  T* B = poly.data();
  for (int step = 0; step < cfg.steps; ++step) {
    // A = X X^T (wide) or X^T X (tall).
    host_gemm<T>(tall, !tall, k, k, inner, T(1), x, cols, x, cols, T(0), A, k);
    if (bf16) {
      // Each op rounded, as torch on bf16 tensors: A; A@A; b*A; c*(A@A); their sum.
      round_all(A, k * k);
      host_gemm<T>(false, false, k, k, k, T(1), A, k, A, k, T(0), B, k);
      for_each_index(k * k, [&](int64_t i) { B[i] = round_bf16(round_bf16(b * A[i]) + round_bf16(c * round_bf16(B[i]))); });
      // Y = B X (or X B); X = a X + Y.
      if (tall) host_gemm<T>(false, false, rows, cols, k, T(1), x, cols, B, k, T(0), y, cols);
      else host_gemm<T>(false, false, rows, cols, k, T(1), B, k, x, cols, T(0), y, cols);
      for_each_index(n, [&](int64_t i) { x[i] = round_bf16(round_bf16(a * x[i]) + round_bf16(y[i])); });
    } else {
      // B = b A + c A A and X = a X + B X (or X B), the scalings fused into gemm's beta.
      copy(A, B, k * k);
      host_gemm<T>(false, false, k, k, k, c, A, k, A, k, b, B, k);
      copy(x, y, n);
      if (tall) host_gemm<T>(false, false, rows, cols, k, T(1), x, cols, B, k, a, y, cols);
      else host_gemm<T>(false, false, rows, cols, k, T(1), B, k, x, cols, a, y, cols);
      std::swap(x, y);
    }
  }
  if (x != out) copy(x, out, n);
}

template void newton_schulz<float>(const float*, float*, int64_t, int64_t, const NewtonSchulzConfig&);
template void newton_schulz<double>(const double*, double*, int64_t, int64_t, const NewtonSchulzConfig&);

void newton_schulz(const Tensor& u, Tensor& out, const NewtonSchulzConfig& cfg) {
  ANVIL_DISPATCH_CUDA(u, newton_schulz, u, out, cfg);
  cpu::require_cpu_dtype(kOp, "u", u, DType::F32);
  cpu::require_cpu_dtype(kOp, "out", out, DType::F32);
  ANVIL_CHECK(u.dim() == 2, kOp, ": u is ", u.describe(),
              " but must be 2-D — view conv or stacked weights as [out, rest] first");
  cpu::require_same_shape(kOp, "u", u, "out", out);
  ANVIL_CHECK(cfg.steps >= 0, kOp, ": steps = ", cfg.steps, " must be >= 0");
  if (u.numel() == 0) return;
  Tensor src = u.contiguous();
  if (out.is_contiguous()) {
    newton_schulz<float>(src.data<float>(), out.data<float>(), u.size(0), u.size(1), cfg);
    return;
  }
  Tensor result = Tensor::empty(u.shape());
  newton_schulz<float>(src.data<float>(), result.data<float>(), u.size(0), u.size(1), cfg);
  out.copy_(result);
}

Tensor newton_schulz(const Tensor& u, const NewtonSchulzConfig& cfg) {
  // Like u (dtype, device); a CPU u that is not f32 is then reported by the checks above.
  ANVIL_CHECK(u.defined(), kOp, ": u is an undefined tensor");
  Tensor out = Tensor::empty(u.shape(), u.dtype(), u.device());
  newton_schulz(u, out, cfg);
  return out;
}

}  // namespace anvil::kernels
