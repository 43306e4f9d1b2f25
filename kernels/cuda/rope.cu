// Rotary position embedding on CUDA (kernels/rope.h), Hugging Face rotate_half convention:
// element i of a head pairs with i + D/2. In place on [B, T, H, D] views (last dim
// contiguous, other strides free); one block per (b, t), threads over (head, pair).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/shape_checks.h"

namespace anvil::kernels::cuda {
namespace {

// Validates x against the tables (as the CPU backend does) and returns D/2.
int64_t check_rope_args(const OpContext& ctx, const Tensor& x, const Tensor& cos, const Tensor& sin,
                        int64_t start_pos, const char* xname) {
  const char* op = ctx.op();
  ctx.require_float(xname, x);
  ctx.require_dtype("cos", cos, DType::F32);
  ctx.require_dtype("sin", sin, DType::F32);
  ANVIL_CHECK(x.dim() == 4, op, ": ", xname, " must be [B, T, H, D], got ", x.describe());
  ANVIL_CHECK(cos.dim() == 2 && cos.is_contiguous() && sin.is_contiguous() && cos.shape() == sin.shape(), op,
              ": cos/sin tables must be contiguous [max_positions, D/2] of equal shape, got cos ", cos.describe(),
              " and sin ", sin.describe(), " — build them with rope_tables and copy them to the device");
  return rope_half_dim(op, xname, x, cos, start_pos);
}

// sign = +1: rotation by +angle; sign = -1: its transpose (rotation by -angle).
template <class E>
__global__ void rope_kernel(E* x, int64_t B, int64_t T, int64_t H, int64_t half, int64_t sb, int64_t st, int64_t sh,
                            const float* cos, const float* sin, int64_t start_pos, const int32_t* positions,
                            int64_t pos_sb, float sign) {
  const int64_t pairs = H * half;
  for (int64_t bt = blockIdx.x; bt < B * T; bt += gridDim.x) {
    const int64_t b = bt / T, t = bt - b * T;
    const int64_t p = positions ? positions[b * pos_sb + t] : start_pos + t;  // explicit ids, else contiguous
    const float* c = cos + p * half;
    const float* s = sin + p * half;
    E* base = x + b * sb + t * st;
    for (int64_t k = threadIdx.x; k < pairs; k += blockDim.x) {
      const int64_t h = k / half, i = k - h * half;
      E* lo = base + h * sh;
      const float a = to_f32(lo[i]), bb = to_f32(lo[i + half]), ci = c[i], si = sign * s[i];
      lo[i] = from_f32<E>(a * ci - bb * si);
      lo[i + half] = from_f32<E>(bb * ci + a * si);
    }
  }
}

// positions (i32 [B, T] or [T] on x's device) replaces start_pos when defined.
void rope_apply(const char* op, const char* xname, Tensor& x, const Tensor& cos, const Tensor& sin,
                int64_t start_pos, const Tensor& positions, float sign) {
  OpContext ctx(op, xname, x);
  const int64_t half = check_rope_args(ctx, x, cos, sin, positions.defined() ? 0 : start_pos, xname);
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2);
  int64_t pos_sb = 0;
  if (positions.defined()) {
    ctx.require_dtype("positions", positions, DType::I32);
    const bool per_row = positions.dim() == 2;
    ANVIL_CHECK(positions.is_contiguous() && (per_row ? positions.shape() == Shape({B, T}) : positions.shape() == Shape({T})),
                op, ": positions must be contiguous i32 [B, T] = ", shape_str({B, T}), " or [T], got ",
                positions.describe(), " for ", xname, " ", x.describe());
    pos_sb = per_row ? T : 0;
  }
  if (B == 0 || T == 0 || H == 0 || half == 0) return;
  with_float_type(x.dtype(), [&](auto tag) {
    using E = decltype(tag);
    rope_kernel<E><<<blocks_for(B * T, 1), threads_for(H * half, 1, kThreads), 0, ctx.stream()>>>(
        static_cast<E*>(x.raw_data()), B, T, H, half, x.stride(0), x.stride(1), x.stride(2), cos.data<float>(),
        sin.data<float>(), start_pos, positions.defined() ? positions.data<int32_t>() : nullptr, pos_sb, sign);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void rope_forward(Tensor& x, const Tensor& cos, const Tensor& sin, int64_t start_pos) {
  rope_apply("rope_forward", "x", x, cos, sin, start_pos, Tensor(), 1.0f);
}

void rope_backward(Tensor& dx, const Tensor& cos, const Tensor& sin, int64_t start_pos) {
  rope_apply("rope_backward", "dx", dx, cos, sin, start_pos, Tensor(), -1.0f);
}

void rope_forward(Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions) {
  rope_apply("rope_forward", "x", x, cos, sin, 0, positions, 1.0f);
}

void rope_backward(Tensor& dx, const Tensor& cos, const Tensor& sin, const Tensor& positions) {
  rope_apply("rope_backward", "dx", dx, cos, sin, 0, positions, -1.0f);
}

}  // namespace anvil::kernels::cuda
