// The host half of kernels/cuda/common.cuh: the op context's checks and the second pass of
// the deterministic column sums.
#include "kernels/cuda/common.cuh"

namespace anvil::kernels::cuda {
namespace {

int lead_device(const char* op, const char* name, const Tensor& t) {
  ANVIL_CHECK(t.defined(), op, ": ", name, " is an undefined tensor — allocate it before calling ", op);
  ANVIL_CHECK(t.device().is_cuda(), op, ": ", name, " is ", t.describe(), " but must be on a CUDA device");
  return t.device().index;
}

}  // namespace

OpContext::OpContext(const char* op, const char* lead_name, const Tensor& lead)
    : op_(op),
      device_(lead_device(op, lead_name, lead)),
      guard_(device_),
      stream_(::anvil::cuda::current_stream(device_)) {}

void OpContext::require_here(const char* name, const Tensor& t) const {
  ANVIL_CHECK(t.defined(), op_, ": ", name, " is an undefined tensor — allocate it before calling ", op_);
  ANVIL_CHECK(t.device() == Device::cuda(device_), op_, ": ", name, " is ", t.describe(), " but this call runs on cuda:",
              device_, " (where its leading tensor is) — move it there with .to(Device::cuda(", device_, "))");
}

void OpContext::require_dtype(const char* name, const Tensor& t, DType dt) const {
  require_here(name, t);
  ANVIL_CHECK(t.dtype() == dt, op_, ": ", name, " is ", t.describe(), " but must be ", dtype_name(dt),
              " here — convert it with .to(DType::", dt == DType::BF16 ? "BF16" : (dt == DType::I32 ? "I32" : "F32"),
              ")");
}

void OpContext::require_float(const char* name, const Tensor& t) const {
  require_here(name, t);
  ANVIL_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16, op_, ": ", name, " is ", t.describe(),
              " but the CUDA kernels take f32 or bf16 — convert it with .to(DType::BF16) or .to(DType::F32)");
}

void* OpContext::contiguous(const char* name, const Tensor& t, DType dt) const {
  require_dtype(name, t, dt);
  ANVIL_CHECK(t.is_contiguous(), op_, ": ", name, " ", t.describe(), " must be contiguous — call .contiguous() first");
  return t.raw_data();
}

Rows OpContext::rows(const char* name, const Tensor& t) const {
  require_float(name, t);
  const RowLayout l = row_layout(op_, name, t);
  Rows v;
  v.p = t.raw_data();
  v.dtype = t.dtype();
  v.rows = l.rows;
  v.cols = l.cols;
  v.ld = l.ld;
  return v;
}

Rows OpContext::rows(const char* name, const Tensor& t, DType dt) const {
  require_dtype(name, t, dt);
  return rows(name, t);
}

void* OpContext::param(const char* name, const Tensor& t, DType dt, int64_t C, const char* xname,
                       const Tensor& x) const {
  void* p = contiguous(name, t, dt);
  ANVIL_CHECK(t.dim() == 1 && t.size(0) == C, op_, ": ", name, " has shape ", shape_str(t.shape()), " but ", xname,
              " ", shape_str(x.shape()), " has ", C, " features — ", name, " must be [", C, "]");
  return p;
}

Tensor OpContext::scratch(int64_t numel, DType dt) const {
  return Tensor::empty({numel}, dt, Device::cuda(device_));
}

void OpContext::read_back(void* host, const void* device_ptr, size_t bytes) const {
  ::anvil::cuda::copy_async(host, device_ptr, bytes, stream_);
  ANVIL_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

namespace {

__global__ void reduce_column_partials_kernel(const float* partials, int64_t chunks, int64_t cols, float* out,
                                              bool accumulate) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < cols;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double acc = accumulate ? out[j] : 0.0;
    for (int64_t c = 0; c < chunks; ++c) acc += partials[c * cols + j];
    out[j] = static_cast<float>(acc);
  }
}

}  // namespace

void reduce_column_partials(const OpContext& ctx, const float* partials, int64_t chunks, int64_t cols, float* out,
                            bool accumulate) {
  if (cols == 0) return;
  reduce_column_partials_kernel<<<blocks_for(cols, kThreads), kThreads, 0, ctx.stream()>>>(partials, chunks, cols,
                                                                                          out, accumulate);
  ANVIL_CUDA_CHECK_LAUNCH();
}

}  // namespace anvil::kernels::cuda
