// Elementwise ops and reductions on CUDA (kernels/elementwise.h). The maps run through
// launch_map; the whole-tensor reductions accumulate in double over a grid fixed by the
// shape, then one block combines the per-block partials in order, so results are bitwise
// reproducible; column sums go through per-chunk partial rows (common.cuh).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace anvil::kernels::cuda {
namespace {

struct AddOp {
  __device__ void operator()(const float* x, float* y) const { y[0] = x[0] + x[1]; }
};

struct AxpyOp {
  float alpha;
  __device__ void operator()(const float* x, float* y) const { y[0] = x[1] + alpha * x[0]; }
};

struct ScaleOp {
  float alpha;
  __device__ void operator()(const float* x, float* y) const { y[0] = x[0] * alpha; }
};

}  // namespace

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  OpContext ctx("add", "a", a);
  Rows va = ctx.rows("a", a), vb = ctx.rows("b", b, a.dtype()), vo = ctx.rows("out", out, a.dtype());
  require_same_shape("add", "a", a, "b", b);
  require_same_shape("add", "out", out, "a", a);
  merge_dense({&va, &vb, &vo});
  launch_map(ctx, {va, vb}, {vo}, AddOp{});
}

void add_inplace(Tensor& y, const Tensor& x) {
  OpContext ctx("add_inplace", "y", y);
  Rows vy = ctx.rows("y", y), vx = ctx.rows("x", x, y.dtype());
  require_same_shape("add_inplace", "y", y, "x", x);
  merge_dense({&vy, &vx});
  launch_map(ctx, {vy, vx}, {vy}, AddOp{});
}

void axpy(float alpha, const Tensor& x, Tensor& y) {
  OpContext ctx("axpy", "y", y);
  Rows vy = ctx.rows("y", y), vx = ctx.rows("x", x, y.dtype());
  require_same_shape("axpy", "y", y, "x", x);
  merge_dense({&vy, &vx});
  launch_map(ctx, {vx, vy}, {vy}, AxpyOp{alpha});
}

void scale_inplace(Tensor& x, float alpha) {
  OpContext ctx("scale_inplace", "x", x);
  Rows vx = ctx.rows("x", x);
  merge_dense({&vx});
  launch_map(ctx, {vx}, {vx}, ScaleOp{alpha});
}

void add_bias(Tensor& y, const Tensor& bias) {
  OpContext ctx("add_bias", "y", y);
  const Rows vy = ctx.rows("y", y);
  void* pb = ctx.contiguous("bias", bias, y.dtype());
  ANVIL_CHECK(bias.dim() == 1 && bias.size(0) == vy.cols, "add_bias: bias has shape ", shape_str(bias.shape()),
              " but y ", shape_str(y.shape()), " has ", vy.cols, " features — bias must be [", vy.cols, "]");
  Rows vb = vy;  // the bias as every row: row stride 0
  vb.p = pb;
  vb.ld = 0;
  launch_map(ctx, {vy, vb}, {vy}, AddOp{});
}

namespace {

// partials[c * cols + j] = sum of x[r, j] over the rows r of chunk c, in row order (f32,
// as the CPU's per-chunk partials). Thread per column: a warp reads contiguous columns.
template <class T>
__global__ void column_partials_kernel(const T* x, int64_t ld, int64_t cols, RowChunks chunks, float* partials) {
  const int64_t c = blockIdx.y;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < cols;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float acc = 0.0f;
    for (int64_t r = chunks.begin(c); r < chunks.end(c); ++r) acc += to_f32(x[r * ld + j]);
    partials[c * cols + j] = acc;
  }
}

// out[j] (+)= sum over rows of x[:, j], deterministic (fixed chunks, chunk-ordered total).
void column_sums(const OpContext& ctx, const Rows& vx, float* out, bool accumulate) {
  const RowChunks chunks = RowChunks::of(vx.rows);
  Tensor partials;
  if (chunks.chunks > 0 && vx.cols > 0) {
    partials = ctx.scratch(chunks.chunks * vx.cols, DType::F32);
    const dim3 grid(blocks_for(vx.cols, kThreads, 4096), static_cast<unsigned>(chunks.chunks));
    with_float_type(vx.dtype, [&](auto tag) {
      using T = decltype(tag);
      column_partials_kernel<T><<<grid, kThreads, 0, ctx.stream()>>>(static_cast<const T*>(vx.p), vx.ld, vx.cols,
                                                                      chunks, partials.data<float>());
      ANVIL_CUDA_CHECK_LAUNCH();
    });
  }
  reduce_column_partials(ctx, chunks.chunks > 0 ? partials.data<float>() : nullptr, chunks.chunks, vx.cols, out,
                         accumulate);
}

}  // namespace

void bias_grad(const Tensor& dy, Tensor& dbias) {
  OpContext ctx("bias_grad", "dy", dy);
  const Rows vd = ctx.rows("dy", dy);
  float* pb = ctx.contiguous_f32("dbias", dbias);
  ANVIL_CHECK(dbias.dim() == 1 && dbias.size(0) == vd.cols, "bias_grad: dbias has shape ",
              shape_str(dbias.shape()), " but dy ", shape_str(dy.shape()), " has ", vd.cols,
              " features — dbias must be [", vd.cols, "]");
  column_sums(ctx, vd, pb, true);
}

void sum_rows(const Tensor& x, Tensor& out) {
  OpContext ctx("sum_rows", "x", x);
  const Rows vx = ctx.rows("x", x);
  float* po = ctx.contiguous_f32("out", out);
  ANVIL_CHECK(out.dim() == 1 && out.size(0) == vx.cols, "sum_rows: out has shape ", shape_str(out.shape()),
              " but x ", shape_str(x.shape()), " has ", vx.cols, " columns — out must be [", vx.cols, "]");
  column_sums(ctx, vx, po, false);
}

namespace {

enum class Reduce { Sum, SumSquares, MaxAbs };

// Tiles of the reduction: kReduceTile columns of one row; block b takes tiles b, b + grid, ...
constexpr int64_t kReduceTile = 4096;
constexpr int64_t kReduceBlocks = 1024;

template <Reduce K>
__device__ __forceinline__ double reduce_step(double acc, float v) {
  if constexpr (K == Reduce::Sum) return acc + v;
  else if constexpr (K == Reduce::SumSquares) return acc + static_cast<double>(v) * v;
  else return NanMaxOp{}(acc, static_cast<double>(fabsf(v)));
}

template <Reduce K>
__device__ __forceinline__ double block_combine(double v) {
  if constexpr (K == Reduce::MaxAbs) return block_reduce(v, NanMaxOp{}, 0.0);
  else return block_sum(v);
}

template <class T, Reduce K>
__global__ void reduce_tiles_kernel(const T* x, int64_t rows, int64_t cols, int64_t ld, int64_t tiles_per_row,
                                    double* partials) {
  double acc = 0.0;
  const int64_t tiles = rows * tiles_per_row;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t r = t / tiles_per_row, j0 = (t - r * tiles_per_row) * kReduceTile;
    const int64_t j1 = j0 + kReduceTile < cols ? j0 + kReduceTile : cols;
    const T* row = x + r * ld;
    for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) acc = reduce_step<K>(acc, to_f32(row[j]));
  }
  acc = block_combine<K>(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// One block folds the per-block partials: thread i takes partials i, i + blockDim, ...
template <Reduce K>
__global__ void reduce_partials_kernel(double* partials, int64_t n) {
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    acc = K == Reduce::MaxAbs ? NanMaxOp{}(acc, partials[i]) : acc + partials[i];
  acc = block_combine<K>(acc);
  if (threadIdx.x == 0) partials[0] = acc;  // every thread has read its partials by now
}

// One tensor's reduction: its [rows, cols] view and the partial slots its blocks write.
struct ReduceJob {
  Rows view;
  int64_t tiles_per_row = 0;
  unsigned grid = 0;
};

ReduceJob reduce_job(const OpContext& ctx, const char* name, const Tensor& x) {
  ReduceJob job{ctx.rows(name, x)};
  merge_dense({&job.view});
  if (job.view.numel() == 0) return job;
  job.tiles_per_row = (job.view.cols + kReduceTile - 1) / kReduceTile;
  job.grid = blocks_for(job.view.rows * job.tiles_per_row, 1, kReduceBlocks);
  return job;
}

// Reduces every job into consecutive partial slots, folds them in order with one block and
// reads the result back: one host round trip however many tensors.
template <Reduce K>
double reduce_jobs(const OpContext& ctx, const std::vector<ReduceJob>& jobs) {
  int64_t slots = 0;
  for (const ReduceJob& j : jobs) slots += j.grid;
  if (slots == 0) return 0.0;
  Tensor partials = ctx.scratch(slots, DType::I64);  // 8-byte slots, holding doubles
  double* pp = static_cast<double*>(partials.raw_data());
  int64_t at = 0;
  for (const ReduceJob& j : jobs) {
    if (j.grid == 0) continue;
    with_float_type(j.view.dtype, [&](auto tag) {
      using T = decltype(tag);
      reduce_tiles_kernel<T, K><<<j.grid, kThreads, 0, ctx.stream()>>>(
          static_cast<const T*>(j.view.p), j.view.rows, j.view.cols, j.view.ld, j.tiles_per_row, pp + at);
      ANVIL_CUDA_CHECK_LAUNCH();
    });
    at += j.grid;
  }
  reduce_partials_kernel<K><<<1, kThreads, 0, ctx.stream()>>>(pp, slots);
  ANVIL_CUDA_CHECK_LAUNCH();
  double result = 0.0;
  ctx.read_back(&result, pp, sizeof result);
  return result;
}

template <Reduce K>
double reduce_all(const char* op, const Tensor& x) {
  OpContext ctx(op, "x", x);
  return reduce_jobs<K>(ctx, {reduce_job(ctx, "x", x)});
}

}  // namespace

double sum(const Tensor& x) { return reduce_all<Reduce::Sum>("sum", x); }
double sum_squares(const Tensor& x) { return reduce_all<Reduce::SumSquares>("sum_squares", x); }
double max_abs(const Tensor& x) { return reduce_all<Reduce::MaxAbs>("max_abs", x); }

double sum_squares(const std::vector<Tensor>& xs) {
  if (xs.empty()) return 0.0;
  OpContext ctx("sum_squares", "xs[0]", xs.front());
  std::vector<ReduceJob> jobs;
  jobs.reserve(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    const std::string name = "xs[" + std::to_string(i) + "]";  // rows() checks it is on xs[0]'s device
    jobs.push_back(reduce_job(ctx, name.c_str(), xs[i]));
  }
  return reduce_jobs<Reduce::SumSquares>(ctx, jobs);
}

}  // namespace anvil::kernels::cuda
