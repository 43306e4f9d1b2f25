// Row gather / scatter-add / row dot of layer-skip routing on CUDA (kernels/route_rows.h).
// One block per compact row; the scatter's target rows are distinct, so plain adds suffice.
// Indices are not range-checked here (the model builds them on the host; the CPU backend checks).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/route_rows.h"

namespace anvil::kernels::cuda {
namespace {

template <class T>
__global__ void gather_kernel(const T* full, int64_t full_ld, const int32_t* index, int64_t M, T* out, int64_t out_ld,
                              int64_t C) {
  for (int64_t i = blockIdx.x; i < M; i += gridDim.x) {
    const int32_t r = index[i];
    T* dst = out + i * out_ld;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) dst[j] = r < 0 ? from_f32<T>(0.0f) : full[r * full_ld + j];
  }
}

template <class T>
__global__ void scatter_add_kernel(const T* compact, int64_t compact_ld, const int32_t* index, int64_t M, T* full,
                                   int64_t full_ld, int64_t C) {
  for (int64_t i = blockIdx.x; i < M; i += gridDim.x) {
    const int32_t r = index[i];
    if (r < 0) continue;  // uniform over the block
    T* dst = full + r * full_ld;
    const T* src = compact + i * compact_ld;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) dst[j] = from_f32<T>(to_f32(dst[j]) + to_f32(src[j]));
  }
}

template <class T>
__global__ void row_dot_kernel(const T* a, int64_t a_ld, const T* b, int64_t b_ld, int64_t M, int64_t C, float* out) {
  for (int64_t i = blockIdx.x; i < M; i += gridDim.x) {
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) s += to_f32(a[i * a_ld + j]) * to_f32(b[i * b_ld + j]);
    s = block_sum(s);
    if (threadIdx.x == 0) out[i] = s;
  }
}

}  // namespace

void gather_rows(const Tensor& full, const Tensor& index, Tensor& out) {
  OpContext ctx("gather_rows", "full", full);
  const Rows vf = ctx.rows("full", full), vo = ctx.rows("out", out, vf.dtype);
  const int32_t* idx = ctx.contiguous_i32("index", index);
  const int64_t M = index.numel(), C = vf.cols;
  ANVIL_CHECK(vo.rows == M && vo.cols == C, ctx.op(), ": out has shape ", shape_str(out.shape()), " but index ",
              shape_str(index.shape()), " and full ", shape_str(full.shape()), " give [", M, ", ", C, "]");
  if (M == 0) return;
  with_float_type(vf.dtype, [&](auto tag) {
    using T = decltype(tag);
    gather_kernel<T><<<blocks_for(M, 1), threads_for(C, 1, kThreads), 0, ctx.stream()>>>(
        static_cast<const T*>(vf.p), vf.ld, idx, M, static_cast<T*>(vo.p), vo.ld, C);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

void scatter_add_rows(const Tensor& compact, const Tensor& index, Tensor& full) {
  OpContext ctx("scatter_add_rows", "full", full);
  const Rows vf = ctx.rows("full", full), vc = ctx.rows("compact", compact, vf.dtype);
  const int32_t* idx = ctx.contiguous_i32("index", index);
  const int64_t M = index.numel(), C = vf.cols;
  ANVIL_CHECK(vc.rows == M && vc.cols == C, ctx.op(), ": compact has shape ", shape_str(compact.shape()),
              " but index ", shape_str(index.shape()), " and full ", shape_str(full.shape()), " need [", M, ", ", C,
              "]");
  if (M == 0) return;
  with_float_type(vf.dtype, [&](auto tag) {
    using T = decltype(tag);
    scatter_add_kernel<T><<<blocks_for(M, 1), threads_for(C, 1, kThreads), 0, ctx.stream()>>>(
        static_cast<const T*>(vc.p), vc.ld, idx, M, static_cast<T*>(vf.p), vf.ld, C);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

void row_dot(const Tensor& a, const Tensor& b, Tensor& out) {
  OpContext ctx("row_dot", "a", a);
  require_same_shape(ctx.op(), "a", a, "b", b);
  const Rows va = ctx.rows("a", a), vb = ctx.rows("b", b, va.dtype);
  float* po = ctx.contiguous_f32("out", out);
  require_numel(ctx.op(), "out", out, va.rows, "a's rows");
  if (va.rows == 0) return;
  with_float_type(va.dtype, [&](auto tag) {
    using T = decltype(tag);
    row_dot_kernel<T><<<blocks_for(va.rows, 1), threads_for(va.cols, 1, kThreads), 0, ctx.stream()>>>(
        static_cast<const T*>(va.p), va.ld, static_cast<const T*>(vb.p), vb.ld, va.rows, va.cols, po);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace anvil::kernels::cuda
