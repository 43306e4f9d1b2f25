// Shared plumbing for the CPU kernels: argument checks with op-naming messages,
// [rows, cols] views of tensors, and deterministic parallel loops/reductions.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "core/tensor.h"
#include "kernels/rows.h"

namespace anvil::kernels::cpu {

// Below this many elements a loop stays on one thread (fork/join costs more).
constexpr int64_t kParallelMin = 1 << 15;

// exp(x) in f32 without a library call, so loops calling it vectorise (glibc's
// vector expf needs -ffast-math). Cephes expf: x = n ln2 + r (Cody-Waite split),
// degree-5 polynomial, scale by 2^n; within 2 ulp of expf on [-87, 88]. Below -87
// (exp < 1.7e-38) it returns 0, as flush-to-zero would; above 88 it saturates at
// exp(88) = 1.65e38 instead of overflowing late; NaN stays NaN.
inline float vexp(float x) {
  const float xc = std::min(88.0f, std::max(-87.0f, x));  // NaN -> -87: keeps the int math defined
  const float n = std::nearbyint(xc * 1.44269504088896341f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return std::isnan(x) ? x : (x < -87.0f ? 0.0f : e * scale);
}

// log(x) in f32 without a library call, so loops calling it vectorise (as vexp). Cephes logf:
// x = m 2^e with m in [sqrt(1/2), sqrt(2)), a degree-9 polynomial in m - 1; within 2 ulp of logf
// for normal x. log(0) = -inf, negative or NaN x gives NaN, +inf stays +inf; a subnormal x gives
// a finite value near log(FLT_MIN) (the implicit bit is missing), not its exact log.
inline float vlog(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xffu) - 126;
  bits = (bits & 0x007fffffu) | 0x3f000000u;  // the mantissa as m in [0.5, 1)
  float m;
  std::memcpy(&m, &bits, sizeof m);
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1 : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe - 0.5f * z;
  const float r = m + y + 0.693359375f * fe;
  const float inf = std::numeric_limits<float>::infinity();
  return x > 0.0f ? (x == inf ? inf : r) : (x == 0.0f ? -inf : std::numeric_limits<float>::quiet_NaN());
}

// 1 / (1 + exp(-x)), vectorisable; evaluated through exp(-|x|) so both tails are
// accurate (sigmoid(-200) is 0, not 1 / (1 + saturated exp)).
inline float vsigmoid(float x) {
  const float e = vexp(-std::fabs(x));
  const float inv = 1.0f / (1.0f + e);
  return x >= 0.0f ? inv : e * inv;
}

// A tensor seen as rows of `cols` contiguous floats, `ld` floats apart (kernels/rows.h).
struct Rows {
  float* p = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
  float* row(int64_t r) const { return p + r * ld; }
  bool dense() const { return rows <= 1 || ld == cols; }
};

// Throws unless t is defined and on the CPU (a CUDA tensor reaches here when the op's
// leading tensor is on the CPU, or in a build without the CUDA backend).
void require_cpu(const char* op, const char* name, const Tensor& t);
// require_cpu + dtype check.
void require_cpu_dtype(const char* op, const char* name, const Tensor& t, DType dtype);
// An f32 CPU tensor as rows (row_layout in kernels/rows.h: the last dim contiguous, the
// leading dims collapsing into one uniform row stride).
Rows as_rows(const char* op, const char* name, const Tensor& t);
// A contiguous f32/i32 CPU tensor's data pointer with a named error otherwise.
float* contiguous_f32(const char* op, const char* name, const Tensor& t);
const int32_t* contiguous_i32(const char* op, const char* name, const Tensor& t);
using kernels::merge_dense;
using kernels::require_numel;
using kernels::require_same_shape;

// Calls fn(row, j0, j1) over [rows, cols] in tiles of at most kTile columns;
// parallel (static schedule) when the work is large enough.
template <class Fn>
void parallel_tiles(int64_t rows, int64_t cols, Fn&& fn) {
  constexpr int64_t kTile = 16384;
  const int64_t nb = std::max<int64_t>(1, (cols + kTile - 1) / kTile);
  const int64_t tiles = rows * nb;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t r = t / nb, b = t % nb;
    fn(r, b * kTile, std::min(cols, (b + 1) * kTile));
  }
}

// Calls fn(row) for every row; parallel when rows * cols is large enough.
template <class Fn>
void parallel_rows(int64_t rows, int64_t cols, Fn&& fn) {
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin && rows > 1)
  for (int64_t r = 0; r < rows; ++r) fn(r);
}

// Deterministic column sums: rows are cut into chunks whose size depends only on
// the shape (never the thread count); each chunk sums its rows in order into its
// own partial row, then the partials are added in chunk order.
class ColumnPartials {
 public:
  // `arrays` partial sums per chunk (e.g. 2 for dweight and dbias).
  ColumnPartials(int64_t rows, int64_t cols, int arrays);
  int64_t chunks() const { return chunks_; }
  int64_t chunk_begin(int64_t c) const { return std::min(rows_, c * chunk_rows_); }
  int64_t chunk_end(int64_t c) const { return std::min(rows_, (c + 1) * chunk_rows_); }
  // Zeroed partial row of array `a` for chunk `c`.
  float* partial(int a, int64_t c) { return buf_.data() + (static_cast<size_t>(a) * chunks_ + c) * cols_; }
  // out[j] (+)= sum over chunks of partial(a, c)[j], summed in double in chunk order.
  void reduce(int a, float* out, bool accumulate) const;

 private:
  int64_t rows_, cols_, chunk_rows_, chunks_;
  std::vector<float> buf_;
};

}  // namespace anvil::kernels::cpu
