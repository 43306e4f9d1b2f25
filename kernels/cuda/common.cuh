// Shared plumbing of the hand-written CUDA kernels: the op's device and stream, argument
// checks whose messages name the op, the [rows, cols] view of f32/bf16 device tensors
// (kernels/rows.h, as the CPU backend sees them), bf16 <-> f32 loads and stores, the
// elementwise map, block reductions and the deterministic column sums.
//
// Conventions: every kernel runs on the op's current stream; arithmetic is f32 (double
// where the CPU accumulates in double); nothing reduces floats with atomics, so every
// result is bitwise reproducible for a given shape.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "core/cuda/runtime.h"
#include "kernels/rows.h"

namespace anvil::kernels::cuda {

using bf16 = __nv_bfloat16;

// ---------------------------------------------------------------- host: checks

// A tensor as rows of `cols` contiguous elements of `dtype`, `ld` elements apart.
struct Rows {
  void* p = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0, ld = 0;
  bool dense() const { return rows <= 1 || ld == cols; }
  int64_t numel() const { return rows * cols; }
};

// One op call on the device of its leading tensor: makes that device current for the
// scope, holds its current stream, and checks the other operands against it.
class OpContext {
 public:
  OpContext(const char* op, const char* lead_name, const Tensor& lead);
  OpContext(const OpContext&) = delete;
  OpContext& operator=(const OpContext&) = delete;

  const char* op() const { return op_; }
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }

  // t is defined and on this op's device.
  void require_here(const char* name, const Tensor& t) const;
  // ... and of dtype `dt`.
  void require_dtype(const char* name, const Tensor& t, DType dt) const;
  // ... and f32 or bf16 (activations and parameter values on CUDA).
  void require_float(const char* name, const Tensor& t) const;
  // ... and contiguous, of dtype `dt`; returns its data.
  void* contiguous(const char* name, const Tensor& t, DType dt) const;
  float* contiguous_f32(const char* name, const Tensor& t) const {
    return static_cast<float*>(contiguous(name, t, DType::F32));
  }
  const int32_t* contiguous_i32(const char* name, const Tensor& t) const {
    return static_cast<const int32_t*>(contiguous(name, t, DType::I32));
  }
  // An f32 or bf16 tensor on this device as rows (kernels/rows.h).
  Rows rows(const char* name, const Tensor& t) const;
  // The same, and of dtype `dt` (operands that share the call's one dtype).
  Rows rows(const char* name, const Tensor& t, DType dt) const;
  // A [C] parameter (or gradient) of dtype `dt` matching x's C features; returns its data.
  void* param(const char* name, const Tensor& t, DType dt, int64_t C, const char* xname, const Tensor& x) const;

  // Scratch memory on this device (freed with the tensor; the caching allocator keeps it
  // ordered with this stream).
  Tensor scratch(int64_t numel, DType dt) const;
  // Copies `bytes` of device memory to the host and waits for them (an op's one sync).
  void read_back(void* host, const void* device_ptr, size_t bytes) const;

 private:
  const char* op_;
  int device_;
  ::anvil::cuda::DeviceGuard guard_;
  cudaStream_t stream_;
};

// Calls fn(float{}) or fn(bf16{}) for an f32 / bf16 dtype, so a generic lambda can
// launch the kernel instantiated for the element type (`using T = decltype(tag)`).
template <class Fn>
void with_float_type(DType dt, Fn&& fn) {
  if (dt == DType::BF16) fn(bf16{});
  else fn(float{});
}

// ---------------------------------------------------------------- host: launch shapes

constexpr int kThreads = 256;
// Grid-stride kernels never need more blocks than this to fill a GPU.
constexpr int64_t kMaxBlocks = 1 << 16;

inline unsigned blocks_for(int64_t items, int64_t per_block, int64_t cap = kMaxBlocks) {
  const int64_t b = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(b < 1 ? 1 : (b > cap ? cap : b));
}

// Threads for a block that strides over `cols` elements, `per_thread` each: a warp
// multiple in [32, max_threads].
inline int threads_for(int64_t cols, int64_t per_thread, int max_threads) {
  const int64_t want = (cols + per_thread - 1) / per_thread;
  const int64_t t = (want + 31) / 32 * 32;
  return static_cast<int>(t < 32 ? 32 : (t > max_threads ? max_threads : t));
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---------------------------------------------------------------- device: loads, stores

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }

template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float v) {
  return __float2bfloat16_rn(v);
}

// How many T fill one 16-byte access.
template <class T>
struct Pack16 {
  static constexpr int N = 16 / static_cast<int>(sizeof(T));
};

// Pack16<T>::N elements at p (16-byte aligned) as f32, in one load.
template <class T>
__device__ __forceinline__ void load16(const T* p, float* out) {
  const int4 raw = *reinterpret_cast<const int4*>(p);
  const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < Pack16<T>::N; ++i) out[i] = to_f32(v[i]);
}

// Pack16<T>::N f32 values rounded to T and stored at p (16-byte aligned) in one store.
template <class T>
__device__ __forceinline__ void store16(T* p, const float* in) {
  alignas(16) T v[Pack16<T>::N];
#pragma unroll
  for (int i = 0; i < Pack16<T>::N; ++i) v[i] = from_f32<T>(in[i]);
  *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(v);
}

// The numerically safe logistic function: through exp(-|x|), so neither tail overflows.
__device__ __forceinline__ float sigmoid_f32(float x) {
  const float e = expf(-fabsf(x));
  const float inv = 1.0f / (1.0f + e);
  return x >= 0.0f ? inv : e * inv;
}

// ---------------------------------------------------------------- device: reductions

struct SumOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

// max that lets a NaN through from either side (a diverged value must not vanish).
struct NanMaxOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return (b > a || b != b) ? b : a;
  }
};

template <class T>
__device__ __forceinline__ T shfl_down(T v, int offset) {
  return __shfl_down_sync(0xffffffffu, v, offset);
}
__device__ __forceinline__ float2 shfl_down(float2 v, int offset) {
  return make_float2(__shfl_down_sync(0xffffffffu, v.x, offset), __shfl_down_sync(0xffffffffu, v.y, offset));
}

template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_down(v, o));
  return v;  // complete in lane 0
}

// op over the block (blockDim.x a multiple of 32, every thread calling), the same value
// returned to every thread. The order is fixed by blockDim, so it is reproducible.
template <class T, class Op>
__device__ T block_reduce(T v, Op op, T identity) {
  __shared__ T warp_part[32];
  __shared__ T total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();  // the previous call's readers of warp_part / total are done
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T s = lane < warps ? warp_part[lane] : identity;
    s = warp_reduce(s, op);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

template <class T>
__device__ __forceinline__ T block_sum(T v) {
  return block_reduce(v, SumOp{}, T(0));
}

// ---------------------------------------------------------------- elementwise map

// Operands of an elementwise op over [rows, cols]: NI inputs and NO outputs of one dtype,
// each with its own row stride (0 broadcasts one row, e.g. a bias).
template <int NI, int NO>
struct MapArgs {
  const void* in[NI];
  int64_t in_ld[NI];
  void* out[NO];
  int64_t out_ld[NO];
  int64_t rows, cols, tiles_per_row;
};

// f(x, y) maps the NI input values of one element to its NO outputs (f32). A thread reads
// every input of its V elements before writing any output, so an output may alias an input.
template <class T, int V, int NI, int NO, class F>
__global__ void map_kernel(MapArgs<NI, NO> a, F f) {
  const int64_t tile_cols = static_cast<int64_t>(blockDim.x) * V;
  const int64_t tiles = a.rows * a.tiles_per_row;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t r = t / a.tiles_per_row;
    const int64_t j = (t - r * a.tiles_per_row) * tile_cols + static_cast<int64_t>(threadIdx.x) * V;
    if (j >= a.cols) continue;
    float x[V][NI], y[V][NO];
    if constexpr (V > 1) {
      float buf[V];
#pragma unroll
      for (int k = 0; k < NI; ++k) {
        load16(static_cast<const T*>(a.in[k]) + r * a.in_ld[k] + j, buf);
#pragma unroll
        for (int e = 0; e < V; ++e) x[e][k] = buf[e];
      }
    } else {
#pragma unroll
      for (int k = 0; k < NI; ++k) x[0][k] = to_f32(static_cast<const T*>(a.in[k])[r * a.in_ld[k] + j]);
    }
#pragma unroll
    for (int e = 0; e < V; ++e) f(x[e], y[e]);
    if constexpr (V > 1) {
      float buf[V];
#pragma unroll
      for (int k = 0; k < NO; ++k) {
#pragma unroll
        for (int e = 0; e < V; ++e) buf[e] = y[e][k];
        store16(static_cast<T*>(a.out[k]) + r * a.out_ld[k] + j, buf);
      }
    } else {
#pragma unroll
      for (int k = 0; k < NO; ++k) static_cast<T*>(a.out[k])[r * a.out_ld[k] + j] = from_f32<T>(y[0][k]);
    }
  }
}

// Runs f over every element of same-shaped views (all of the dtype of out[0]; an input
// with ld 0 repeats its one row). 16-byte accesses when every row start is aligned.
template <int NI, int NO, class F>
void launch_map(const OpContext& ctx, const Rows (&in)[NI], const Rows (&out)[NO], F f) {
  const int64_t rows = out[0].rows, cols = out[0].cols;
  if (rows == 0 || cols == 0) return;
  MapArgs<NI, NO> a;
  a.rows = rows;
  a.cols = cols;
  with_float_type(out[0].dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = Pack16<T>::N;
    bool vec = cols % kVec == 0;
    for (int k = 0; k < NI; ++k) {
      a.in[k] = in[k].p;
      a.in_ld[k] = in[k].ld;
      vec = vec && aligned16(in[k].p) && in[k].ld % kVec == 0;
    }
    for (int k = 0; k < NO; ++k) {
      a.out[k] = out[k].p;
      a.out_ld[k] = out[k].ld;
      vec = vec && aligned16(out[k].p) && out[k].ld % kVec == 0;
    }
    const int v = vec ? kVec : 1;
    const int threads = threads_for(cols, v, kThreads);
    a.tiles_per_row = (cols + static_cast<int64_t>(threads) * v - 1) / (static_cast<int64_t>(threads) * v);
    const unsigned grid = blocks_for(rows * a.tiles_per_row, 1);
    if (vec) map_kernel<T, kVec><<<grid, threads, 0, ctx.stream()>>>(a, f);
    else map_kernel<T, 1><<<grid, threads, 0, ctx.stream()>>>(a, f);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

// ---------------------------------------------------------------- column sums

// Rows cut into chunks whose size depends only on the row count (never the GPU), so the
// per-chunk partial sums, and the chunk-ordered total, are the same on every run.
struct RowChunks {
  int64_t rows = 0, chunk_rows = 1, chunks = 0;
  static RowChunks of(int64_t rows) {
    // At most 512 chunks of at least 4 rows: enough blocks to fill a GPU, a small buffer.
    RowChunks c;
    c.rows = rows;
    const int64_t per = (rows + 511) / 512;
    c.chunk_rows = per < 4 ? 4 : per;
    c.chunks = (rows + c.chunk_rows - 1) / c.chunk_rows;
    return c;
  }
  __host__ __device__ int64_t begin(int64_t c) const { return c * chunk_rows; }
  __host__ __device__ int64_t end(int64_t c) const {
    const int64_t e = (c + 1) * chunk_rows;
    return e < rows ? e : rows;
  }
};

// out[j] (+)= sum over c < chunks of partials[c * cols + j], added in double in chunk order
// (the second half of every deterministic column sum: bias_grad, sum_rows, the norms'
// weight gradients). `partials` and `out` are f32 on ctx's device.
void reduce_column_partials(const OpContext& ctx, const float* partials, int64_t chunks, int64_t cols, float* out,
                            bool accumulate);

}  // namespace anvil::kernels::cuda
