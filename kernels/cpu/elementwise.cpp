// Fused elementwise ops and reductions on the CPU: single-pass row/tile loops,
// OpenMP over tiles, deterministic (shape-determined) reduction order.
#include "kernels/elementwise.h"

#include <cmath>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/common.h"

namespace anvil::kernels {

using cpu::Rows;

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  ANVIL_DISPATCH_CUDA(a, add, a, b, out);
  Rows va = cpu::as_rows("add", "a", a), vb = cpu::as_rows("add", "b", b), vo = cpu::as_rows("add", "out", out);
  cpu::require_same_shape("add", "a", a, "b", b);
  cpu::require_same_shape("add", "out", out, "a", a);
  cpu::merge_dense({&va, &vb, &vo});
  // out may alias a or b: each element is read before it is written.
  cpu::parallel_tiles(vo.rows, vo.cols, [&](int64_t r, int64_t j0, int64_t j1) {
    const float* pa = va.row(r);
    const float* pb = vb.row(r);
    float* po = vo.row(r);
    for (int64_t j = j0; j < j1; ++j) po[j] = pa[j] + pb[j];
  });
}

void add_inplace(Tensor& y, const Tensor& x) {
  ANVIL_DISPATCH_CUDA(y, add_inplace, y, x);
  Rows vy = cpu::as_rows("add_inplace", "y", y), vx = cpu::as_rows("add_inplace", "x", x);
  cpu::require_same_shape("add_inplace", "y", y, "x", x);
  cpu::merge_dense({&vy, &vx});
  cpu::parallel_tiles(vy.rows, vy.cols, [&](int64_t r, int64_t j0, int64_t j1) {
    const float* px = vx.row(r);
    float* py = vy.row(r);
    for (int64_t j = j0; j < j1; ++j) py[j] += px[j];
  });
}

void axpy(float alpha, const Tensor& x, Tensor& y) {
  ANVIL_DISPATCH_CUDA(y, axpy, alpha, x, y);
  Rows vy = cpu::as_rows("axpy", "y", y), vx = cpu::as_rows("axpy", "x", x);
  cpu::require_same_shape("axpy", "y", y, "x", x);
  cpu::merge_dense({&vy, &vx});
  cpu::parallel_tiles(vy.rows, vy.cols, [&](int64_t r, int64_t j0, int64_t j1) {
    const float* px = vx.row(r);
    float* py = vy.row(r);
    for (int64_t j = j0; j < j1; ++j) py[j] += alpha * px[j];
  });
}

void scale_inplace(Tensor& x, float alpha) {
  ANVIL_DISPATCH_CUDA(x, scale_inplace, x, alpha);
  Rows vx = cpu::as_rows("scale_inplace", "x", x);
  cpu::merge_dense({&vx});
  cpu::parallel_tiles(vx.rows, vx.cols, [&](int64_t r, int64_t j0, int64_t j1) {
    float* px = vx.row(r);
    for (int64_t j = j0; j < j1; ++j) px[j] *= alpha;
  });
}

void add_bias(Tensor& y, const Tensor& bias) {
  ANVIL_DISPATCH_CUDA(y, add_bias, y, bias);
  const Rows vy = cpu::as_rows("add_bias", "y", y);
  const float* pb = cpu::contiguous_f32("add_bias", "bias", bias);
  ANVIL_CHECK(bias.dim() == 1 && bias.size(0) == vy.cols, "add_bias: bias has shape ", shape_str(bias.shape()),
              " but y ", shape_str(y.shape()), " has ", vy.cols, " features — bias must be [", vy.cols, "]");
  cpu::parallel_rows(vy.rows, vy.cols, [&](int64_t r) {
    float* py = vy.row(r);
    for (int64_t j = 0; j < vy.cols; ++j) py[j] += pb[j];
  });
}

namespace {

// out[j] (+)= sum over rows of x[:, j], deterministic for any thread count.
void column_sums(const Rows& vx, float* out, bool accumulate) {
  cpu::ColumnPartials parts(vx.rows, vx.cols, 1);
  const int64_t n = vx.cols;
#pragma omp parallel for schedule(static) if (vx.rows * vx.cols >= cpu::kParallelMin)
  for (int64_t c = 0; c < parts.chunks(); ++c) {
    float* acc = parts.partial(0, c);
    for (int64_t r = parts.chunk_begin(c); r < parts.chunk_end(c); ++r) {
      const float* px = vx.row(r);
      for (int64_t j = 0; j < n; ++j) acc[j] += px[j];
    }
  }
  if (parts.chunks() == 0) {
    if (!accumulate)
      for (int64_t j = 0; j < n; ++j) out[j] = 0.0f;
    return;
  }
  parts.reduce(0, out, accumulate);
}

}  // namespace

void bias_grad(const Tensor& dy, Tensor& dbias) {
  ANVIL_DISPATCH_CUDA(dy, bias_grad, dy, dbias);
  const Rows vd = cpu::as_rows("bias_grad", "dy", dy);
  float* pb = cpu::contiguous_f32("bias_grad", "dbias", dbias);
  ANVIL_CHECK(dbias.dim() == 1 && dbias.size(0) == vd.cols, "bias_grad: dbias has shape ",
              shape_str(dbias.shape()), " but dy ", shape_str(dy.shape()), " has ", vd.cols,
              " features — dbias must be [", vd.cols, "]");
  column_sums(vd, pb, true);
}

void sum_rows(const Tensor& x, Tensor& out) {
  ANVIL_DISPATCH_CUDA(x, sum_rows, x, out);
  const Rows vx = cpu::as_rows("sum_rows", "x", x);
  float* po = cpu::contiguous_f32("sum_rows", "out", out);
  ANVIL_CHECK(out.dim() == 1 && out.size(0) == vx.cols, "sum_rows: out has shape ", shape_str(out.shape()),
              " but x ", shape_str(x.shape()), " has ", vx.cols, " columns — out must be [", vx.cols, "]");
  column_sums(vx, po, false);
}

namespace {

enum class Reduce { Sum, SumSquares, MaxAbs };

// Whole-tensor reduction in double over fixed tiles (shape-determined), combined
// in tile order, so the result does not depend on the thread count.
double reduce_all(const char* op, const Tensor& x, Reduce kind) {
  Rows vx = cpu::as_rows(op, "x", x);
  cpu::merge_dense({&vx});
  constexpr int64_t kTile = 8192;
  const int64_t nb = std::max<int64_t>(1, (vx.cols + kTile - 1) / kTile);
  const int64_t tiles = vx.rows * nb;
  std::vector<double> partial(static_cast<size_t>(tiles), 0.0);
#pragma omp parallel for schedule(static) if (vx.rows * vx.cols >= cpu::kParallelMin)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t r = t / nb, j0 = (t % nb) * kTile, j1 = std::min(vx.cols, j0 + kTile);
    const float* px = vx.row(r);
    double s = 0.0;
    if (kind == Reduce::Sum) {
#pragma omp simd reduction(+ : s)
      for (int64_t j = j0; j < j1; ++j) s += px[j];
    } else if (kind == Reduce::SumSquares) {
#pragma omp simd reduction(+ : s)
      for (int64_t j = j0; j < j1; ++j) s += static_cast<double>(px[j]) * px[j];
    } else {
      for (int64_t j = j0; j < j1; ++j) {
        const double a = std::fabs(static_cast<double>(px[j]));
        s = (a > s || std::isnan(a)) ? a : s;  // NaN propagates
      }
    }
    partial[t] = s;
  }
  double total = 0.0;
  for (double p : partial) {
    if (kind == Reduce::MaxAbs) total = (p > total || std::isnan(p)) ? p : total;
    else total += p;
  }
  return total;
}

}  // namespace

double sum(const Tensor& x) {
  ANVIL_DISPATCH_CUDA(x, sum, x);
  return reduce_all("sum", x, Reduce::Sum);
}

double sum_squares(const Tensor& x) {
  ANVIL_DISPATCH_CUDA(x, sum_squares, x);
  return reduce_all("sum_squares", x, Reduce::SumSquares);
}

double sum_squares(const std::vector<Tensor>& xs) {
  if (xs.empty()) return 0.0;
  ANVIL_DISPATCH_CUDA(xs.front(), sum_squares, xs);
  double total = 0.0;
  for (const Tensor& x : xs) total += sum_squares(x);
  return total;
}

double max_abs(const Tensor& x) {
  ANVIL_DISPATCH_CUDA(x, max_abs, x);
  return reduce_all("max_abs", x, Reduce::MaxAbs);
}

}  // namespace anvil::kernels
