// Device discovery and the tensor copies/fills core/tensor.cpp hands to CUDA.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "core/cuda/runtime.h"
#include "core/cuda_device.h"

namespace anvil {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls are not poisoned
    return 0;
  }
  return count;
}

std::string cuda_unavailable_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("CUDA runtime reports: ") + cudaGetErrorString(err);
  }
  return count == 0 ? "no CUDA device is visible" : "";
}

bool cuda_built() { return true; }

void cuda_set_device(int index) {
  const int count = cuda_device_count();
  ANVIL_CHECK(index >= 0 && index < count, "CUDA device ", index, " does not exist: ", count,
              " device(s) are visible — check CUDA_VISIBLE_DEVICES and the ranks per node");
  ANVIL_CUDA_CHECK(cudaSetDevice(index));
}

std::string cuda_device_name(int index) {
  cudaDeviceProp prop{};
  ANVIL_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  return prop.name;
}

void cuda_synchronize(int index) { cuda::synchronize(index); }

namespace {

constexpr int kMaxDims = 8;

struct Layout {
  int dims;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
  int64_t offset;
};

Layout layout_of(const Tensor& t, const char* what) {
  ANVIL_CHECK(t.dim() <= kMaxDims, what, " ", t.describe(), " has more than ", kMaxDims,
              " dims, more than the CUDA copy kernel handles — reshape it first");
  Layout l{};
  l.dims = t.dim();
  for (int d = 0; d < l.dims; ++d) {
    l.shape[d] = t.size(d);
    l.strides[d] = t.stride(d);
  }
  l.offset = t.offset();
  return l;
}

__device__ int64_t element_offset(const Layout& l, int64_t linear) {
  int64_t off = l.offset;
  for (int d = l.dims - 1; d >= 0; --d) {
    const int64_t i = linear % l.shape[d];
    linear /= l.shape[d];
    off += i * l.strides[d];
  }
  return off;
}

// Integers travel through double (exact up to 2^53); floats through float.
__device__ double load_element(const void* base, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    case DType::F16: return __half2float(static_cast<const __half*>(base)[i]);
    case DType::I32: return static_cast<const int32_t*>(base)[i];
    case DType::I64: return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DType::I8: return static_cast<const int8_t*>(base)[i];
    case DType::U8: return static_cast<const uint8_t*>(base)[i];
  }
  return 0;
}

__device__ void store_element(void* base, DType dt, int64_t i, double v) {
  switch (dt) {
    case DType::F32: static_cast<float*>(base)[i] = static_cast<float>(v); break;
    case DType::BF16: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(static_cast<float>(v)); break;
    case DType::F16: static_cast<__half*>(base)[i] = __float2half_rn(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v); break;
    case DType::I64: static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v); break;
    case DType::I8: static_cast<int8_t*>(base)[i] = static_cast<int8_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(v); break;
  }
}

__global__ void strided_convert_kernel(const void* src, DType src_dt, Layout sl, void* dst, DType dst_dt, Layout dl,
                                       int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store_element(dst, dst_dt, element_offset(dl, i), load_element(src, src_dt, element_offset(sl, i)));
}

__global__ void fill_kernel(void* dst, DType dt, Layout l, double value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store_element(dst, dt, element_offset(l, i), value);
}

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

char* byte_base(const Tensor& t) { return static_cast<char*>(t.storage()->data()); }

// src and dst on the same CUDA device: any strides, any dtypes.
void copy_on_device(const Tensor& src, Tensor& dst) {
  const int dev = dst.device().index;
  cuda::DeviceGuard guard(dev);
  cudaStream_t stream = cuda::current_stream(dev);
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    cuda::copy_async(dst.raw_data(), src.raw_data(), dst.nbytes(), stream);
    return;
  }
  const int64_t n = dst.numel();
  strided_convert_kernel<<<grid_for(n), 256, 0, stream>>>(byte_base(src), src.dtype(), layout_of(src, "copy_ source"),
                                                          byte_base(dst), dst.dtype(), layout_of(dst, "copy_ target"), n);
  ANVIL_CUDA_CHECK_LAUNCH();
}

}  // namespace

void cuda_copy(const Tensor& src, Tensor& dst) {
  ANVIL_CHECK(src.shape() == dst.shape(), "copy_: shape ", shape_str(src.shape()), " into ", dst.describe());
  if (dst.numel() == 0) return;
  const Device sd = src.device(), dd = dst.device();
  if (sd == dd) return copy_on_device(src, dst);
  if (sd.is_cpu()) {  // host -> device: convert and pack on the host, one transfer, then place
    const Tensor staged = src.dtype() == dst.dtype() ? src.contiguous() : src.to(dst.dtype());
    Tensor packed = dst.is_contiguous() ? dst : Tensor::empty(dst.shape(), dst.dtype(), dd);
    cuda::DeviceGuard guard(dd.index);
    // From pageable memory the call returns once the bytes are staged, so `staged` may go.
    cuda::copy_async(packed.raw_data(), staged.raw_data(), packed.nbytes(), cuda::current_stream(dd.index));
    if (!dst.is_contiguous()) copy_on_device(packed, dst);
    return;
  }
  // device -> host or device -> other device: pack (and convert) on the source device first.
  Tensor packed = src;
  if (!src.is_contiguous() || src.dtype() != dst.dtype()) {
    packed = Tensor::empty(src.shape(), dst.dtype(), sd);
    copy_on_device(src, packed);
  }
  if (dd.is_cpu()) {
    Tensor host = dst.is_contiguous() ? dst : Tensor::empty(dst.shape(), dst.dtype(), dd);
    cuda::DeviceGuard guard(sd.index);
    cuda::copy_async(host.raw_data(), packed.raw_data(), host.nbytes(), cuda::current_stream(sd.index));
    cuda::synchronize(sd.index);
    if (!dst.is_contiguous()) dst.copy_(host);
    return;
  }
  // Peer copy: the target stream waits for the source's packing, then pulls the bytes; the
  // source stream then waits for the copy, so neither `packed` (cached again on that stream)
  // nor src (written there next) changes under it. Each event is made and recorded on its
  // stream's own device (cudaEventRecord fails across devices; cudaStreamWaitEvent may cross).
  Tensor landing = dst.is_contiguous() ? dst : Tensor::empty(dst.shape(), dst.dtype(), dd);
  const cudaStream_t src_stream = cuda::current_stream(sd.index), dst_stream = cuda::current_stream(dd.index);
  {
    cuda::DeviceGuard guard(sd.index);
    cuda::Event packed_ready;
    packed_ready.record(src_stream);
    packed_ready.wait(dst_stream);
  }
  cuda::DeviceGuard guard(dd.index);
  cuda::copy_async(landing.raw_data(), packed.raw_data(), landing.nbytes(), dst_stream);
  cuda::Event copied;
  copied.record(dst_stream);
  copied.wait(src_stream);
  if (!dst.is_contiguous()) copy_on_device(landing, dst);
}

void cuda_fill(Tensor& t, double value) {
  if (t.numel() == 0) return;
  const int dev = t.device().index;
  cuda::DeviceGuard guard(dev);
  cudaStream_t stream = cuda::current_stream(dev);
  if (value == 0.0 && t.is_contiguous()) {
    ANVIL_CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, t.nbytes(), stream));
    return;
  }
  const int64_t n = t.numel();
  fill_kernel<<<grid_for(n), 256, 0, stream>>>(byte_base(t), t.dtype(), layout_of(t, "fill_ target"), value, n);
  ANVIL_CUDA_CHECK_LAUNCH();
}

}  // namespace anvil
