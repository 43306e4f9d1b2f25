// Dropout on CUDA (kernels/dropout.h): the CPU's draws element for element. Element (r, c) takes
// Philox word 0 at index first[r] + c under the stream's (seed, stream, step) (core/philox.h, the
// CPU's own code), so the mask is the CPU's bit for bit. The layout's row_of is a host function:
// first[r] = row_of(r) · logical_cols + first_col is evaluated on the host and copied to the
// device with the launch (rows × 8 bytes, small beside the activation).
#include <vector>

#include "core/cuda/runtime.h"
#include "core/philox.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace anvil::kernels::cuda {
namespace {

template <class T>
__global__ void dropout_kernel(T* x, int64_t rows, int64_t cols, const int64_t* first, float p, float keep_scale,
                               uint64_t seed, uint32_t stream, uint32_t step) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const float u = philox::uniform24(philox::stream_u32(seed, stream, step, static_cast<uint64_t>(first[r] + c)));
    x[i] = u >= p ? from_f32<T>(to_f32(x[i]) * keep_scale) : from_f32<T>(0.0f);
  }
}

}  // namespace

void dropout_inplace(Tensor& x, float p, const PhiloxStream& rng, const DropoutLayout& layout, const char* what) {
  OpContext ctx("dropout_inplace", "x", x);
  ctx.require_float("x", x);
  require_dropout_args(x, p, layout, what);
  const int64_t rows = x.size(0), cols = x.size(1);
  if (rows * cols == 0) return;
  std::vector<int64_t> first(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) first[static_cast<size_t>(r)] = layout.row_of(r) * layout.logical_cols + layout.first_col;
  const Tensor first_dev = ctx.scratch(rows, DType::I64);
  // From pageable memory the copy is staged before the call returns, so `first` may go after it.
  ::anvil::cuda::copy_async(first_dev.raw_data(), first.data(), first.size() * sizeof(int64_t), ctx.stream());
  const float keep_scale = 1.0f / (1.0f - p);  // the CPU's f32 value
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    dropout_kernel<T><<<blocks_for(rows * cols, kThreads), kThreads, 0, ctx.stream()>>>(
        static_cast<T*>(x.raw_data()), rows, cols, static_cast<const int64_t*>(first_dev.raw_data()), p, keep_scale,
        rng.seed(), rng.stream(), rng.step());
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace anvil::kernels::cuda
