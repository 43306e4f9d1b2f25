// LayerNorm and RMSNorm on the CPU: one fused pass per row, OpenMP over rows;
// weight/bias gradients via shape-determined row chunks (bitwise reproducible).
#include "kernels/norm.h"

#include <cmath>

#include "kernels/backend.h"
#include "kernels/cpu/common.h"

namespace anvil::kernels {
namespace {

// Checks a [C] parameter (or its gradient) and returns its data.
float* param(const char* op, const char* name, const Tensor& t, int64_t C, const char* xname, const Tensor& x) {
  float* p = cpu::contiguous_f32(op, name, t);
  ANVIL_CHECK(t.dim() == 1 && t.size(0) == C, op, ": ", name, " has shape ", shape_str(t.shape()), " but ", xname,
              " ", shape_str(x.shape()), " has ", C, " features — ", name, " must be [", C, "]");
  return p;
}

// Checks a per-row statistic (mean / rstd): rows elements, any shape, contiguous.
float* row_stat(const char* op, const char* name, const Tensor& t, int64_t rows, const Tensor& x) {
  float* p = cpu::contiguous_f32(op, name, t);
  ANVIL_CHECK(t.numel() == rows, op, ": ", name, " has shape ", shape_str(t.shape()), " but x ",
              shape_str(x.shape()), " has ", rows, " rows — ", name, " needs one value per row");
  return p;
}

}  // namespace

void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& y,
                       Tensor& mean, Tensor& rstd) {
  ANVIL_DISPATCH_CUDA(x, layernorm_forward, x, weight, bias, eps, y, mean, rstd);
  constexpr const char* op = "layernorm_forward";
  const cpu::Rows vx = cpu::as_rows(op, "x", x), vy = cpu::as_rows(op, "y", y);
  cpu::require_same_shape(op, "y", y, "x", x);
  const int64_t C = vx.cols;
  const float* w = param(op, "weight", weight, C, "x", x);
  const float* b = bias.defined() ? param(op, "bias", bias, C, "x", x) : nullptr;
  float* pm = mean.defined() ? row_stat(op, "mean", mean, vx.rows, x) : nullptr;
  float* pr = rstd.defined() ? row_stat(op, "rstd", rstd, vx.rows, x) : nullptr;
  ANVIL_CHECK(C > 0, op, ": x ", x.describe(), " has no features to normalise");
  cpu::parallel_rows(vx.rows, C, [&](int64_t r) {
    const float* xr = vx.row(r);
    float* yr = vy.row(r);  // may alias xr: xr is only read before yr is written
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < C; ++j) s += xr[j];
    const float m = s / static_cast<float>(C);
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int64_t j = 0; j < C; ++j) {
      const float d = xr[j] - m;
      v += d * d;
    }
    const float rs = 1.0f / std::sqrt(v / static_cast<float>(C) + eps);
    if (b) {
      for (int64_t j = 0; j < C; ++j) yr[j] = (xr[j] - m) * rs * w[j] + b[j];
    } else {
      for (int64_t j = 0; j < C; ++j) yr[j] = (xr[j] - m) * rs * w[j];
    }
    if (pm) pm[r] = m;
    if (pr) pr[r] = rs;
  });
}

void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias) {
  ANVIL_DISPATCH_CUDA(dy, layernorm_backward, dy, x, weight, mean, rstd, dx, dweight, dbias);
  constexpr const char* op = "layernorm_backward";
  const cpu::Rows vx = cpu::as_rows(op, "x", x), vdy = cpu::as_rows(op, "dy", dy);
  cpu::require_same_shape(op, "dy", dy, "x", x);
  const int64_t C = vx.cols, R = vx.rows;
  const float* w = param(op, "weight", weight, C, "x", x);
  const float* pm = row_stat(op, "mean", mean, R, x);
  const float* pr = row_stat(op, "rstd", rstd, R, x);
  cpu::Rows vdx;
  if (dx.defined()) {
    vdx = cpu::as_rows(op, "dx", dx);
    cpu::require_same_shape(op, "dx", dx, "x", x);
  }
  float* dw = dweight.defined() ? param(op, "dweight", dweight, C, "x", x) : nullptr;
  float* db = dbias.defined() ? param(op, "dbias", dbias, C, "x", x) : nullptr;
  const bool want_dx = dx.defined();

  cpu::ColumnPartials parts(R, (dw || db) ? C : 0, 2);
  const float inv_c = 1.0f / static_cast<float>(C);
#pragma omp parallel for schedule(static) if (R * C >= cpu::kParallelMin)
  for (int64_t c = 0; c < parts.chunks(); ++c) {
    float* pdw = dw ? parts.partial(0, c) : nullptr;
    float* pdb = db ? parts.partial(1, c) : nullptr;
    for (int64_t r = parts.chunk_begin(c); r < parts.chunk_end(c); ++r) {
      const float* xr = vx.row(r);
      const float* dyr = vdy.row(r);
      const float m = pm[r], rs = pr[r];
      if (want_dx) {
        // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w.
        float sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
        for (int64_t j = 0; j < C; ++j) {
          const float g = dyr[j] * w[j];
          sg += g;
          sgx += g * (xr[j] - m) * rs;
        }
        const float mg = sg * inv_c, mgx = sgx * inv_c;
        float* dxr = vdx.row(r);  // may alias dyr: dyr[j] is read before dxr[j] is written
        for (int64_t j = 0; j < C; ++j) {
          const float d = dyr[j], xh = (xr[j] - m) * rs;
          if (pdw) pdw[j] += d * xh;
          if (pdb) pdb[j] += d;
          dxr[j] = rs * (d * w[j] - mg - xh * mgx);
        }
      } else {
        for (int64_t j = 0; j < C; ++j) {
          const float d = dyr[j], xh = (xr[j] - m) * rs;
          if (pdw) pdw[j] += d * xh;
          if (pdb) pdb[j] += d;
        }
      }
    }
  }
  if (dw) parts.reduce(0, dw, true);
  if (db) parts.reduce(1, db, true);
}

void rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, Tensor& y, Tensor& rstd) {
  ANVIL_DISPATCH_CUDA(x, rmsnorm_forward, x, weight, eps, y, rstd);
  constexpr const char* op = "rmsnorm_forward";
  const cpu::Rows vx = cpu::as_rows(op, "x", x), vy = cpu::as_rows(op, "y", y);
  cpu::require_same_shape(op, "y", y, "x", x);
  const int64_t C = vx.cols;
  const float* w = param(op, "weight", weight, C, "x", x);
  float* pr = rstd.defined() ? row_stat(op, "rstd", rstd, vx.rows, x) : nullptr;
  ANVIL_CHECK(C > 0, op, ": x ", x.describe(), " has no features to normalise");
  cpu::parallel_rows(vx.rows, C, [&](int64_t r) {
    const float* xr = vx.row(r);
    float* yr = vy.row(r);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < C; ++j) s += xr[j] * xr[j];
    const float rs = 1.0f / std::sqrt(s / static_cast<float>(C) + eps);
    for (int64_t j = 0; j < C; ++j) yr[j] = xr[j] * rs * w[j];
    if (pr) pr[r] = rs;
  });
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor& dx,
                      Tensor& dweight) {
  ANVIL_DISPATCH_CUDA(dy, rmsnorm_backward, dy, x, weight, rstd, dx, dweight);
  constexpr const char* op = "rmsnorm_backward";
  const cpu::Rows vx = cpu::as_rows(op, "x", x), vdy = cpu::as_rows(op, "dy", dy);
  cpu::require_same_shape(op, "dy", dy, "x", x);
  const int64_t C = vx.cols, R = vx.rows;
  const float* w = param(op, "weight", weight, C, "x", x);
  const float* pr = row_stat(op, "rstd", rstd, R, x);
  cpu::Rows vdx;
  if (dx.defined()) {
    vdx = cpu::as_rows(op, "dx", dx);
    cpu::require_same_shape(op, "dx", dx, "x", x);
  }
  float* dw = dweight.defined() ? param(op, "dweight", dweight, C, "x", x) : nullptr;
  const bool want_dx = dx.defined();

  cpu::ColumnPartials parts(R, dw ? C : 0, 1);
  const float inv_c = 1.0f / static_cast<float>(C);
#pragma omp parallel for schedule(static) if (R * C >= cpu::kParallelMin)
  for (int64_t c = 0; c < parts.chunks(); ++c) {
    float* pdw = dw ? parts.partial(0, c) : nullptr;
    for (int64_t r = parts.chunk_begin(c); r < parts.chunk_end(c); ++r) {
      const float* xr = vx.row(r);
      const float* dyr = vdy.row(r);
      const float rs = pr[r];
      if (want_dx) {
        // dx = rstd * (g - xhat * mean(g * xhat)), g = dy * w.
        float sgx = 0.0f;
#pragma omp simd reduction(+ : sgx)
        for (int64_t j = 0; j < C; ++j) sgx += dyr[j] * w[j] * xr[j] * rs;
        const float mgx = sgx * inv_c;
        float* dxr = vdx.row(r);  // may alias dyr
        for (int64_t j = 0; j < C; ++j) {
          const float d = dyr[j], xh = xr[j] * rs;
          if (pdw) pdw[j] += d * xh;
          dxr[j] = rs * (d * w[j] - xh * mgx);
        }
      } else if (pdw) {
        for (int64_t j = 0; j < C; ++j) pdw[j] += dyr[j] * xr[j] * rs;
      }
    }
  }
  if (dw) parts.reduce(0, dw, true);
}

}  // namespace anvil::kernels
