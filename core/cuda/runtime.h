// The CUDA runtime as anvil uses it: checked calls, the per-device compute and
// communication streams, events, and scoped device/stream selection. Included only by
// code compiled with the CUDA backend (core/cuda, kernels/cuda, parallel/cuda).
//
// Streams: every kernel and copy runs on current_stream(device), a non-blocking stream
// (never the legacy default stream, which would serialise everything). Collectives run on
// comm_stream(device) so gradient buckets and TP/PP traffic overlap compute; the two are
// ordered with events. Plain cudaMemcpy must not be used: it runs on the legacy stream,
// which a non-blocking stream does not wait for. Use copy_async + synchronize instead.
#pragma once
#include <cuda_runtime.h>

#include "core/error.h"
#include "core/tensor.h"

#define ANVIL_CUDA_CHECK(expr)                                                  \
  do {                                                                          \
    const cudaError_t anvil_cuda_err_ = (expr);                                 \
    if (anvil_cuda_err_ != cudaSuccess)                                         \
      ::anvil::cuda::throw_error(anvil_cuda_err_, #expr, __FILE__, __LINE__);   \
  } while (0)

// After a kernel launch: reports a bad launch configuration at the launch site.
#define ANVIL_CUDA_CHECK_LAUNCH() ANVIL_CUDA_CHECK(cudaGetLastError())

namespace anvil::cuda {

[[noreturn]] void throw_error(cudaError_t err, const char* expr, const char* file, int line);

// The device index of a CUDA tensor, with an error naming `what` otherwise.
int device_of(const Tensor& t, const char* what);

// The stream this thread launches work on for `device`: the innermost StreamGuard's, else
// the process-wide compute stream of that device (created on first use).
cudaStream_t current_stream(int device);
// The process-wide communication stream of `device` (NCCL collectives run here).
cudaStream_t comm_stream(int device);
// Blocks the host until the current stream of `device` has finished its work.
void synchronize(int device);

// Makes `device` current for the scope (cudaSetDevice), restoring the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// Makes `stream` this thread's current stream of `device` for the scope.
class StreamGuard {
 public:
  StreamGuard(int device, cudaStream_t stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  int device_;
  cudaStream_t previous_;
};

// A cudaEvent_t with ownership. Timing is off unless asked for (cheaper to record).
class Event {
 public:
  explicit Event(bool timing = false);
  ~Event();
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(cudaStream_t stream);
  // `stream` waits (on the device, the host does not block) for the recorded work.
  void wait(cudaStream_t stream) const;
  void synchronize() const;
  bool query() const;  // true once the recorded work has finished
  float elapsed_ms(const Event& start) const;  // both timing events, both recorded
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// Marks that `stream` (other than the tensor's allocation stream) uses t's memory, so the
// caching allocator does not hand the block out again before that stream's queued work
// finishes (PyTorch calls this record_stream). `stream` must belong to t's device: the
// allocator records an event on it at release, and an event can be recorded only on a stream
// of its own device (for a peer device, make that stream's work an event the owner waits for).
void record_stream(const Tensor& t, cudaStream_t stream);

// bytes from src to dst on `stream` (cudaMemcpyDefault: either side may be host or device).
void copy_async(void* dst, const void* src, size_t bytes, cudaStream_t stream);

}  // namespace anvil::cuda
