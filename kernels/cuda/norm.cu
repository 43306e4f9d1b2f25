// LayerNorm and RMSNorm on CUDA (kernels/norm.h), one kernel template for both (kRms).
// Forward: one block per row (grid-stride), mean and variance in two passes as the CPU does,
// f32 statistics saved. Backward: one block per fixed chunk of rows (RowChunks); each row's
// two sums are block reductions, dx is written in the same pass that adds the row into the
// block's dweight/dbias partial row, and a second kernel adds the partial rows in chunk
// order — no float atomics, so the gradients are bitwise reproducible.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace anvil::kernels::cuda {
namespace {

// Per-thread partial accumulators live in shared memory up to this size (under the 48 KiB a
// block gets without opting in, with room for block_reduce's own), else in the global
// partial rows themselves (the same code: each thread owns its columns either way).
constexpr size_t kMaxAccumulatorSmem = 40 * 1024;

int norm_threads(int64_t C) { return threads_for(C, 4, 512); }

template <class T, bool kRms>
__global__ void norm_forward_kernel(const T* x, int64_t x_ld, T* y, int64_t y_ld, int64_t rows, int64_t C,
                                    const T* w, const T* b, float eps, float* mean, float* rstd) {
  const float c_f = static_cast<float>(C);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * x_ld;
    T* yr = y + r * y_ld;  // may alias xr: every read of the row precedes the last block_sum
    float m = 0.0f;
    if constexpr (!kRms) {
      float s = 0.0f;
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) s += to_f32(xr[j]);
      m = block_sum(s) / c_f;
    }
    float v = 0.0f;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
      const float d = to_f32(xr[j]) - m;
      v += d * d;
    }
    const float rs = 1.0f / sqrtf(block_sum(v) / c_f + eps);
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
      float o = (to_f32(xr[j]) - m) * rs * to_f32(w[j]);
      if (!kRms && b) o += to_f32(b[j]);
      yr[j] = from_f32<T>(o);
    }
    if (threadIdx.x == 0) {
      if (mean) mean[r] = m;
      if (rstd) rstd[r] = rs;
    }
  }
}

// Block c handles the rows of chunk c. Thread t owns columns t, t + blockDim, ... of the
// accumulators acc_w / acc_b (shared memory or this chunk's partial rows), so they need no
// synchronisation; dx may alias dy (each element of dy is read before dx there is written).
template <class T, bool kRms>
__global__ void norm_backward_kernel(const T* dy, int64_t dy_ld, const T* x, int64_t x_ld, T* dx, int64_t dx_ld,
                                     const T* w, const float* mean, const float* rstd, int64_t C, RowChunks chunks,
                                     float* partial_w, float* partial_b, bool smem_acc) {
  extern __shared__ float smem[];
  const int64_t c = blockIdx.x;
  float* acc_w = partial_w ? (smem_acc ? smem : partial_w + c * C) : nullptr;
  float* acc_b = partial_b ? (smem_acc ? smem + (partial_w ? C : 0) : partial_b + c * C) : nullptr;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
    if (acc_w) acc_w[j] = 0.0f;
    if (acc_b) acc_b[j] = 0.0f;
  }
  const float inv_c = 1.0f / static_cast<float>(C);
  for (int64_t r = chunks.begin(c); r < chunks.end(c); ++r) {
    const T* dyr = dy + r * dy_ld;
    const T* xr = x + r * x_ld;
    const float m = kRms ? 0.0f : mean[r], rs = rstd[r];
    if (dx) {
      // dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w (RMSNorm: no mean(g) term).
      float sg = 0.0f, sgx = 0.0f;
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        const float g = to_f32(dyr[j]) * to_f32(w[j]);
        if constexpr (!kRms) sg += g;
        sgx += g * (to_f32(xr[j]) - m) * rs;
      }
      const float mg = kRms ? 0.0f : block_sum(sg) * inv_c;
      const float mgx = block_sum(sgx) * inv_c;
      T* dxr = dx + r * dx_ld;
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        const float d = to_f32(dyr[j]), xh = (to_f32(xr[j]) - m) * rs;
        if (acc_w) acc_w[j] += d * xh;
        if (acc_b) acc_b[j] += d;
        dxr[j] = from_f32<T>(rs * (d * to_f32(w[j]) - mg - xh * mgx));
      }
    } else {
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        const float d = to_f32(dyr[j]), xh = (to_f32(xr[j]) - m) * rs;
        if (acc_w) acc_w[j] += d * xh;
        if (acc_b) acc_b[j] += d;
      }
    }
  }
  if (smem_acc) {
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
      if (acc_w) partial_w[c * C + j] = acc_w[j];
      if (acc_b) partial_b[c * C + j] = acc_b[j];
    }
  }
}

// Checks a per-row statistic (mean / rstd): f32, contiguous, one value per row.
float* row_stat(const OpContext& ctx, const char* name, const Tensor& t, int64_t rows, const Tensor& x) {
  float* p = ctx.contiguous_f32(name, t);
  ANVIL_CHECK(t.numel() == rows, ctx.op(), ": ", name, " has shape ", shape_str(t.shape()), " but x ",
              shape_str(x.shape()), " has ", rows, " rows — ", name, " needs one value per row");
  return p;
}

template <bool kRms>
void norm_forward(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& y,
                  Tensor* mean, Tensor& rstd) {
  OpContext ctx(op, "x", x);
  const DType dt = x.dtype();
  const Rows vx = ctx.rows("x", x), vy = ctx.rows("y", y, dt);
  require_same_shape(op, "y", y, "x", x);
  const int64_t C = vx.cols, R = vx.rows;
  const void* w = ctx.param("weight", weight, dt, C, "x", x);
  const void* b = bias.defined() ? ctx.param("bias", bias, dt, C, "x", x) : nullptr;
  float* pm = mean && mean->defined() ? row_stat(ctx, "mean", *mean, R, x) : nullptr;
  float* pr = rstd.defined() ? row_stat(ctx, "rstd", rstd, R, x) : nullptr;
  ANVIL_CHECK(C > 0, op, ": x ", x.describe(), " has no features to normalise");
  if (R == 0) return;
  with_float_type(dt, [&](auto tag) {
    using T = decltype(tag);
    norm_forward_kernel<T, kRms><<<blocks_for(R, 1), norm_threads(C), 0, ctx.stream()>>>(
        static_cast<const T*>(vx.p), vx.ld, static_cast<T*>(vy.p), vy.ld, R, C, static_cast<const T*>(w),
        static_cast<const T*>(b), eps, pm, pr);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

template <bool kRms>
void norm_backward(const char* op, const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor* mean,
                   const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor* dbias) {
  OpContext ctx(op, "dy", dy);
  const DType dt = x.dtype();
  const Rows vx = ctx.rows("x", x), vdy = ctx.rows("dy", dy, dt);
  require_same_shape(op, "dy", dy, "x", x);
  const int64_t C = vx.cols, R = vx.rows;
  const void* w = ctx.param("weight", weight, dt, C, "x", x);
  const float* pm = kRms ? nullptr : row_stat(ctx, "mean", *mean, R, x);
  const float* pr = row_stat(ctx, "rstd", rstd, R, x);
  Rows vdx;
  if (dx.defined()) {
    vdx = ctx.rows("dx", dx, dt);
    require_same_shape(op, "dx", dx, "x", x);
  }
  float* dw = dweight.defined() ? static_cast<float*>(ctx.param("dweight", dweight, DType::F32, C, "x", x)) : nullptr;
  float* db = dbias && dbias->defined() ? static_cast<float*>(ctx.param("dbias", *dbias, DType::F32, C, "x", x))
                                        : nullptr;
  if (R == 0 || C == 0 || (!dx.defined() && !dw && !db)) return;

  const RowChunks chunks = RowChunks::of(R);
  const int arrays = (dw ? 1 : 0) + (db ? 1 : 0);
  Tensor partials = arrays ? ctx.scratch(arrays * chunks.chunks * C, DType::F32) : Tensor();
  float* part_w = dw ? partials.data<float>() : nullptr;
  float* part_b = db ? partials.data<float>() + (dw ? chunks.chunks * C : 0) : nullptr;
  const size_t smem_bytes = static_cast<size_t>(arrays) * static_cast<size_t>(C) * sizeof(float);
  const bool smem_acc = arrays > 0 && smem_bytes <= kMaxAccumulatorSmem;
  with_float_type(dt, [&](auto tag) {
    using T = decltype(tag);
    norm_backward_kernel<T, kRms><<<static_cast<unsigned>(chunks.chunks), norm_threads(C),
                                    smem_acc ? smem_bytes : 0, ctx.stream()>>>(
        static_cast<const T*>(vdy.p), vdy.ld, static_cast<const T*>(vx.p), vx.ld,
        dx.defined() ? static_cast<T*>(vdx.p) : nullptr, vdx.ld, static_cast<const T*>(w), pm, pr, C, chunks,
        part_w, part_b, smem_acc);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
  if (dw) reduce_column_partials(ctx, part_w, chunks.chunks, C, dw, true);
  if (db) reduce_column_partials(ctx, part_b, chunks.chunks, C, db, true);
}

}  // namespace

void layernorm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& y, Tensor& mean,
                       Tensor& rstd) {
  norm_forward<false>("layernorm_forward", x, weight, bias, eps, y, &mean, rstd);
}

void layernorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& mean,
                        const Tensor& rstd, Tensor& dx, Tensor& dweight, Tensor& dbias) {
  norm_backward<false>("layernorm_backward", dy, x, weight, &mean, rstd, dx, dweight, &dbias);
}

void rmsnorm_forward(const Tensor& x, const Tensor& weight, float eps, Tensor& y, Tensor& rstd) {
  norm_forward<true>("rmsnorm_forward", x, weight, Tensor(), eps, y, nullptr, rstd);
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor& dx,
                      Tensor& dweight) {
  norm_backward<true>("rmsnorm_backward", dy, x, weight, nullptr, rstd, dx, dweight, nullptr);
}

}  // namespace anvil::kernels::cuda
