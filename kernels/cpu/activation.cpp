// GELU (tanh approximation), SwiGLU and the residual SiLU on the CPU: elementwise tile loops, each
// element read into locals before its output is written (so aliasing is safe).
#include "kernels/activation.h"

#include <cmath>

#include "kernels/backend.h"
#include "kernels/cpu/common.h"

namespace anvil::kernels {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

}  // namespace

void gelu_forward(const Tensor& x, Tensor& y) {
  ANVIL_DISPATCH_CUDA(x, gelu_forward, x, y);
  cpu::Rows vx = cpu::as_rows("gelu_forward", "x", x), vy = cpu::as_rows("gelu_forward", "y", y);
  cpu::require_same_shape("gelu_forward", "y", y, "x", x);
  cpu::merge_dense({&vx, &vy});
  cpu::parallel_tiles(vx.rows, vx.cols, [&](int64_t r, int64_t j0, int64_t j1) {
    const float* px = vx.row(r);
    float* py = vy.row(r);
    for (int64_t j = j0; j < j1; ++j) {
      const float v = px[j];
      const float u = kSqrt2OverPi * (v + kGeluCubic * v * v * v);
      // 0.5 (1 + tanh(u)) = sigmoid(2u): no cancellation, one vectorisable exp.
      py[j] = v * cpu::vsigmoid(2.0f * u);
    }
  });
}

void gelu_backward(const Tensor& dy, const Tensor& x, Tensor& dx) {
  ANVIL_DISPATCH_CUDA(dy, gelu_backward, dy, x, dx);
  constexpr const char* op = "gelu_backward";
  cpu::Rows vdy = cpu::as_rows(op, "dy", dy), vx = cpu::as_rows(op, "x", x), vdx = cpu::as_rows(op, "dx", dx);
  cpu::require_same_shape(op, "dy", dy, "x", x);
  cpu::require_same_shape(op, "dx", dx, "x", x);
  cpu::merge_dense({&vdy, &vx, &vdx});
  cpu::parallel_tiles(vx.rows, vx.cols, [&](int64_t r, int64_t j0, int64_t j1) {
    const float* px = vx.row(r);
    const float* pdy = vdy.row(r);
    float* pdx = vdx.row(r);
    for (int64_t j = j0; j < j1; ++j) {
      const float v = px[j], g = pdy[j];
      const float u = kSqrt2OverPi * (v + kGeluCubic * v * v * v);
      // With s = sigmoid(2u) = 0.5 (1 + tanh(u)): 1 - tanh(u)^2 = 4 s (1 - s), so
      // gelu' = 0.5 (1 + t) + 0.5 x (1 - t^2) u' = s + 2 x s (1 - s) u'.
      const float s = cpu::vsigmoid(2.0f * u);
      const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * v * v);
      pdx[j] = g * (s + 2.0f * v * s * (1.0f - s) * du);
    }
  });
}

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& y) {
  ANVIL_DISPATCH_CUDA(gate, swiglu_forward, gate, up, y);
  constexpr const char* op = "swiglu_forward";
  cpu::Rows vg = cpu::as_rows(op, "gate", gate), vu = cpu::as_rows(op, "up", up), vy = cpu::as_rows(op, "y", y);
  cpu::require_same_shape(op, "up", up, "gate", gate);
  cpu::require_same_shape(op, "y", y, "gate", gate);
  cpu::merge_dense({&vg, &vu, &vy});
  cpu::parallel_tiles(vg.rows, vg.cols, [&](int64_t r, int64_t j0, int64_t j1) {
    const float* pg = vg.row(r);
    const float* pu = vu.row(r);
    float* py = vy.row(r);
    for (int64_t j = j0; j < j1; ++j) {
      const float g = pg[j];
      py[j] = g * cpu::vsigmoid(g) * pu[j];
    }
  });
}

void swiglu_backward(const Tensor& dy, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) {
  ANVIL_DISPATCH_CUDA(dy, swiglu_backward, dy, gate, up, dgate, dup);
  constexpr const char* op = "swiglu_backward";
  cpu::Rows vdy = cpu::as_rows(op, "dy", dy), vg = cpu::as_rows(op, "gate", gate), vu = cpu::as_rows(op, "up", up);
  cpu::Rows vdg = cpu::as_rows(op, "dgate", dgate), vdu = cpu::as_rows(op, "dup", dup);
  cpu::require_same_shape(op, "up", up, "gate", gate);
  cpu::require_same_shape(op, "dy", dy, "gate", gate);
  cpu::require_same_shape(op, "dgate", dgate, "gate", gate);
  cpu::require_same_shape(op, "dup", dup, "gate", gate);
  ANVIL_CHECK(!(vdg.p == vdu.p && vdg.rows > 0 && vdg.cols > 0), op, ": dgate and dup are the same memory (",
              dgate.describe(), ") — at most one of them may alias dy");
  cpu::merge_dense({&vdy, &vg, &vu, &vdg, &vdu});
  cpu::parallel_tiles(vg.rows, vg.cols, [&](int64_t r, int64_t j0, int64_t j1) {
    const float* pdy = vdy.row(r);
    const float* pg = vg.row(r);
    const float* pu = vu.row(r);
    float* pdg = vdg.row(r);
    float* pdu = vdu.row(r);
    for (int64_t j = j0; j < j1; ++j) {
      const float d = pdy[j], g = pg[j], u = pu[j];
      const float s = cpu::vsigmoid(g);
      // d silu(g) / dg = s * (1 + g * (1 - s)).
      pdg[j] = d * u * s * (1.0f + g * (1.0f - s));
      pdu[j] = d * g * s;
    }
  });
}

void residual_silu_forward(const Tensor& x, const Tensor& pre, Tensor& y) {
  ANVIL_DISPATCH_CUDA(x, residual_silu_forward, x, pre, y);
  constexpr const char* op = "residual_silu_forward";
  cpu::Rows vx = cpu::as_rows(op, "x", x), vp = cpu::as_rows(op, "pre", pre), vy = cpu::as_rows(op, "y", y);
  cpu::require_same_shape(op, "pre", pre, "x", x);
  cpu::require_same_shape(op, "y", y, "x", x);
  cpu::merge_dense({&vx, &vp, &vy});
  cpu::parallel_tiles(vx.rows, vx.cols, [&](int64_t r, int64_t j0, int64_t j1) {
    const float* px = vx.row(r);
    const float* pp = vp.row(r);
    float* py = vy.row(r);
    for (int64_t j = j0; j < j1; ++j) {
      const float g = pp[j], h = px[j];
      py[j] = h + g * cpu::vsigmoid(g);
    }
  });
}

void silu_backward(const Tensor& dy, const Tensor& pre, Tensor& dpre) {
  ANVIL_DISPATCH_CUDA(dy, silu_backward, dy, pre, dpre);
  constexpr const char* op = "silu_backward";
  cpu::Rows vdy = cpu::as_rows(op, "dy", dy), vp = cpu::as_rows(op, "pre", pre), vd = cpu::as_rows(op, "dpre", dpre);
  cpu::require_same_shape(op, "dy", dy, "pre", pre);
  cpu::require_same_shape(op, "dpre", dpre, "pre", pre);
  cpu::merge_dense({&vdy, &vp, &vd});
  cpu::parallel_tiles(vp.rows, vp.cols, [&](int64_t r, int64_t j0, int64_t j1) {
    const float* pdy = vdy.row(r);
    const float* pp = vp.row(r);
    float* pd = vd.row(r);
    for (int64_t j = j0; j < j1; ++j) {
      const float d = pdy[j], g = pp[j];
      const float s = cpu::vsigmoid(g);
      pd[j] = d * s * (1.0f + g * (1.0f - s));
    }
  });
}

}  // namespace anvil::kernels
