// GELU (tanh approximation), SwiGLU and the residual SiLU on CUDA (kernels/activation.h): elementwise maps,
// the same formulas as the CPU backend (kernels/cpu/activation.cpp), f32 arithmetic.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace anvil::kernels::cuda {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

struct GeluForwardOp {
  __device__ void operator()(const float* x, float* y) const {
    const float v = x[0];
    const float u = kSqrt2OverPi * (v + kGeluCubic * v * v * v);
    y[0] = v * sigmoid_f32(2.0f * u);  // 0.5 (1 + tanh(u)) = sigmoid(2u)
  }
};

struct GeluBackwardOp {  // x = {dy, x}
  __device__ void operator()(const float* x, float* y) const {
    const float g = x[0], v = x[1];
    const float u = kSqrt2OverPi * (v + kGeluCubic * v * v * v);
    // s = sigmoid(2u): gelu' = s + 2 x s (1 - s) u'.
    const float s = sigmoid_f32(2.0f * u);
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
    y[0] = g * (s + 2.0f * v * s * (1.0f - s) * du);
  }
};

struct SwigluForwardOp {  // x = {gate, up}
  __device__ void operator()(const float* x, float* y) const {
    const float g = x[0];
    y[0] = g * sigmoid_f32(g) * x[1];
  }
};

struct SwigluBackwardOp {  // x = {dy, gate, up}; y = {dgate, dup}
  __device__ void operator()(const float* x, float* y) const {
    const float d = x[0], g = x[1], u = x[2];
    const float s = sigmoid_f32(g);
    y[0] = d * u * s * (1.0f + g * (1.0f - s));  // d silu(g) / dg = s (1 + g (1 - s))
    y[1] = d * g * s;
  }
};

struct ResidualSiluForwardOp {  // x = {x, pre}
  __device__ void operator()(const float* x, float* y) const {
    const float g = x[1];
    y[0] = x[0] + g * sigmoid_f32(g);
  }
};

struct SiluBackwardOp {  // x = {dy, pre}
  __device__ void operator()(const float* x, float* y) const {
    const float d = x[0], g = x[1];
    const float s = sigmoid_f32(g);
    y[0] = d * s * (1.0f + g * (1.0f - s));
  }
};

}  // namespace

void gelu_forward(const Tensor& x, Tensor& y) {
  OpContext ctx("gelu_forward", "x", x);
  Rows vx = ctx.rows("x", x), vy = ctx.rows("y", y, x.dtype());
  require_same_shape("gelu_forward", "y", y, "x", x);
  merge_dense({&vx, &vy});
  launch_map(ctx, {vx}, {vy}, GeluForwardOp{});
}

void gelu_backward(const Tensor& dy, const Tensor& x, Tensor& dx) {
  constexpr const char* op = "gelu_backward";
  OpContext ctx(op, "dy", dy);
  Rows vdy = ctx.rows("dy", dy), vx = ctx.rows("x", x, dy.dtype()), vdx = ctx.rows("dx", dx, dy.dtype());
  require_same_shape(op, "dy", dy, "x", x);
  require_same_shape(op, "dx", dx, "x", x);
  merge_dense({&vdy, &vx, &vdx});
  launch_map(ctx, {vdy, vx}, {vdx}, GeluBackwardOp{});
}

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& y) {
  constexpr const char* op = "swiglu_forward";
  OpContext ctx(op, "gate", gate);
  Rows vg = ctx.rows("gate", gate), vu = ctx.rows("up", up, gate.dtype()), vy = ctx.rows("y", y, gate.dtype());
  require_same_shape(op, "up", up, "gate", gate);
  require_same_shape(op, "y", y, "gate", gate);
  merge_dense({&vg, &vu, &vy});
  launch_map(ctx, {vg, vu}, {vy}, SwigluForwardOp{});
}

void swiglu_backward(const Tensor& dy, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) {
  constexpr const char* op = "swiglu_backward";
  OpContext ctx(op, "dy", dy);
  const DType dt = dy.dtype();
  Rows vdy = ctx.rows("dy", dy), vg = ctx.rows("gate", gate, dt), vu = ctx.rows("up", up, dt);
  Rows vdg = ctx.rows("dgate", dgate, dt), vdu = ctx.rows("dup", dup, dt);
  require_same_shape(op, "up", up, "gate", gate);
  require_same_shape(op, "dy", dy, "gate", gate);
  require_same_shape(op, "dgate", dgate, "gate", gate);
  require_same_shape(op, "dup", dup, "gate", gate);
  ANVIL_CHECK(!(vdg.p == vdu.p && vdg.rows > 0 && vdg.cols > 0), op, ": dgate and dup are the same memory (",
              dgate.describe(), ") — at most one of them may alias dy");
  merge_dense({&vdy, &vg, &vu, &vdg, &vdu});
  launch_map(ctx, {vdy, vg, vu}, {vdg, vdu}, SwigluBackwardOp{});
}

void residual_silu_forward(const Tensor& x, const Tensor& pre, Tensor& y) {
  constexpr const char* op = "residual_silu_forward";
  OpContext ctx(op, "x", x);
  Rows vx = ctx.rows("x", x), vp = ctx.rows("pre", pre, x.dtype()), vy = ctx.rows("y", y, x.dtype());
  require_same_shape(op, "pre", pre, "x", x);
  require_same_shape(op, "y", y, "x", x);
  merge_dense({&vx, &vp, &vy});
  launch_map(ctx, {vx, vp}, {vy}, ResidualSiluForwardOp{});
}

void silu_backward(const Tensor& dy, const Tensor& pre, Tensor& dpre) {
  constexpr const char* op = "silu_backward";
  OpContext ctx(op, "dy", dy);
  Rows vdy = ctx.rows("dy", dy), vp = ctx.rows("pre", pre, dy.dtype()), vd = ctx.rows("dpre", dpre, dy.dtype());
  require_same_shape(op, "dy", dy, "pre", pre);
  require_same_shape(op, "dpre", dpre, "pre", pre);
  merge_dense({&vdy, &vp, &vd});
  launch_map(ctx, {vdy, vp}, {vd}, SiluBackwardOp{});
}

}  // namespace anvil::kernels::cuda
