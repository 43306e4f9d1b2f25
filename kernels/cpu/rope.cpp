// Rotary position embedding, Hugging Face Llama convention (rotate_half: element i
// pairs with i + D/2). Angles are formed in double; the tables hold f32 cos/sin.
#include "kernels/rope.h"

#include <cmath>

#include "kernels/backend.h"
#include "kernels/cpu/common.h"
#include "kernels/shape_checks.h"

namespace anvil::kernels {

namespace {

// Validates x against the tables and returns D/2.
int64_t check_rope_args(const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t start_pos,
                        const char* op, const char* xname) {
  cpu::require_cpu(op, xname, x);
  cpu::require_cpu(op, "cos", cos);
  cpu::require_cpu(op, "sin", sin);
  ANVIL_CHECK(x.dim() == 4, op, ": ", xname, " must be [B, T, H, D], got ", x.describe());
  check_dtype(x, DType::F32, xname);
  check_dtype(cos, DType::F32, "rope cos table");
  check_dtype(sin, DType::F32, "rope sin table");
  ANVIL_CHECK(cos.dim() == 2 && cos.is_contiguous() && sin.is_contiguous() && cos.shape() == sin.shape(), op,
              ": cos/sin tables must be contiguous [max_positions, D/2] of equal shape, got cos ",
              cos.describe(), " and sin ", sin.describe(), " — build them with rope_tables");
  return rope_half_dim(op, xname, x, cos, start_pos);
}

// Throws unless positions is contiguous i32 [B, T] or [T] for x [B, T, H, D] and every
// position is a row of the tables; returns the row stride of positions (0 for [T]).
int64_t check_positions(const Tensor& x, const Tensor& cos, const Tensor& positions, const char* op) {
  cpu::require_cpu(op, "positions", positions);
  const int64_t B = x.size(0), T = x.size(1);
  const bool per_row = positions.dim() == 2;
  ANVIL_CHECK(positions.dtype() == DType::I32 && positions.is_contiguous() &&
                  (per_row ? positions.shape() == Shape({B, T}) : positions.shape() == Shape({T})),
              op, ": positions must be contiguous i32 [B, T] = ", shape_str({B, T}), " or [T], got ",
              positions.describe(), " for x ", x.describe());
  const int32_t* p = positions.data<int32_t>();
  for (int64_t i = 0; i < positions.numel(); ++i)
    ANVIL_CHECK(p[i] >= 0 && p[i] < cos.size(0), op, ": position ", p[i], " at index ", i, " is outside the ",
                cos.size(0), " rows of the cos/sin tables — positions must lie in [0, max_positions)");
  return per_row ? T : 0;
}

// sign = +1: forward rotation by +angle; sign = -1: its transpose (rotation by -angle).
// Token (b, t) sits at positions[b * pos_sb + t] when positions is given, else start_pos + t.
void rope_apply(Tensor& x, const Tensor& cos, const Tensor& sin, int64_t start_pos, float sign,
                const int32_t* positions = nullptr, int64_t pos_sb = 0) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), half = cos.size(1);
  if (B == 0 || T == 0 || H == 0 || half == 0) return;
  float* base = x.data<float>();
  const float* ctab = cos.data<float>();
  const float* stab = sin.data<float>();
  const int64_t sb = x.stride(0), st = x.stride(1), sh = x.stride(2);
  const int64_t rows = B * T;
  const bool parallel = rows * H * half >= (1 << 15);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / T, t = r % T;
    const int64_t p = positions ? positions[b * pos_sb + t] : start_pos + t;
    const float* c = ctab + p * half;
    const float* s = stab + p * half;
    for (int64_t h = 0; h < H; ++h) {
      float* lo = base + b * sb + t * st + h * sh;
      float* hi = lo + half;
      for (int64_t i = 0; i < half; ++i) {
        const float a = lo[i], bb = hi[i], ss = sign * s[i];
        lo[i] = a * c[i] - bb * ss;
        hi[i] = bb * c[i] + a * ss;
      }
    }
  }
}

}  // namespace

std::vector<float> rope_inv_freq(int64_t head_dim, double theta) {
  ANVIL_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope_inv_freq: head_dim must be positive and even, got ",
              head_dim);
  ANVIL_CHECK(theta > 0 && std::isfinite(theta), "rope_inv_freq: theta must be positive and finite, got ",
              theta);
  std::vector<float> inv(static_cast<size_t>(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i)
    inv[static_cast<size_t>(i)] =
        static_cast<float>(std::pow(theta, -static_cast<double>(2 * i) / static_cast<double>(head_dim)));
  return inv;
}

void rope_tables(const std::vector<float>& inv_freq, int64_t max_positions, Tensor& cos, Tensor& sin) {
  ANVIL_CHECK(max_positions >= 0, "rope_tables: max_positions must be >= 0, got ", max_positions);
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  const Shape shape{max_positions, half};
  if (!cos.defined()) cos = Tensor::empty(shape);
  if (!sin.defined()) sin = Tensor::empty(shape);
  cpu::require_cpu("rope_tables", "cos", cos);
  cpu::require_cpu("rope_tables", "sin", sin);
  check_shape(cos, shape, "rope_tables cos");
  check_shape(sin, shape, "rope_tables sin");
  check_dtype(cos, DType::F32, "rope_tables cos");
  check_dtype(sin, DType::F32, "rope_tables sin");
  ANVIL_CHECK(cos.is_contiguous() && sin.is_contiguous(), "rope_tables: cos ", cos.describe(), " and sin ",
              sin.describe(), " must be contiguous");
  if (max_positions == 0 || half == 0) return;
  float* c = cos.data<float>();
  float* s = sin.data<float>();
  for (int64_t p = 0; p < max_positions; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * static_cast<double>(inv_freq[static_cast<size_t>(i)]);
      c[p * half + i] = static_cast<float>(std::cos(angle));
      s[p * half + i] = static_cast<float>(std::sin(angle));
    }
}

void rope_forward(Tensor& x, const Tensor& cos, const Tensor& sin, int64_t start_pos) {
  ANVIL_DISPATCH_CUDA(x, rope_forward, x, cos, sin, start_pos);
  check_rope_args(x, cos, sin, start_pos, "rope_forward", "x");
  rope_apply(x, cos, sin, start_pos, 1.0f);
}

void rope_backward(Tensor& dx, const Tensor& cos, const Tensor& sin, int64_t start_pos) {
  ANVIL_DISPATCH_CUDA(dx, rope_backward, dx, cos, sin, start_pos);
  check_rope_args(dx, cos, sin, start_pos, "rope_backward", "dx");
  rope_apply(dx, cos, sin, start_pos, -1.0f);
}

void rope_forward(Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions) {
  ANVIL_DISPATCH_CUDA(x, rope_forward, x, cos, sin, positions);
  check_rope_args(x, cos, sin, 0, "rope_forward", "x");
  const int64_t pos_sb = check_positions(x, cos, positions, "rope_forward");
  rope_apply(x, cos, sin, 0, 1.0f, positions.data<int32_t>(), pos_sb);
}

void rope_backward(Tensor& dx, const Tensor& cos, const Tensor& sin, const Tensor& positions) {
  ANVIL_DISPATCH_CUDA(dx, rope_backward, dx, cos, sin, positions);
  check_rope_args(dx, cos, sin, 0, "rope_backward", "dx");
  const int64_t pos_sb = check_positions(dx, cos, positions, "rope_backward");
  rope_apply(dx, cos, sin, 0, -1.0f, positions.data<int32_t>(), pos_sb);
}

}  // namespace anvil::kernels
