#include "core/cuda/runtime.h"

#include <mutex>
#include <unordered_map>
#include <vector>

namespace anvil::cuda {

void throw_error(cudaError_t err, const char* expr, const char* file, int line) {
  cudaGetLastError();  // clear a non-sticky error so the next call is not blamed for it
  const char* hint =
      err == cudaErrorMemoryAllocation ? " — the GPU is out of memory: reduce the micro-batch or sequence length" : "";
  ANVIL_FAIL("CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") from ", expr, " at ", file, ":",
             line, hint);
}

int device_of(const Tensor& t, const char* what) {
  ANVIL_CHECK(t.defined(), what, " is an undefined tensor");
  ANVIL_CHECK(t.device().is_cuda(), what, " is ", t.describe(),
              " but must be on a CUDA device — copy it with .to(Device::cuda())");
  return t.device().index;
}

namespace {

// Streams created once per device and kept for the life of the process (destroying them
// at exit would race with the driver's own teardown).
struct DeviceStreams {
  cudaStream_t compute = nullptr;
  cudaStream_t comm = nullptr;
};

DeviceStreams& streams_of(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, DeviceStreams> streams;
  std::lock_guard<std::mutex> lock(mutex);
  DeviceStreams& s = streams[device];
  if (s.compute == nullptr) {
    DeviceGuard guard(device);
    // The communication stream gets the higher priority so a bucket's all-reduce is not
    // starved by the backward kernels it is meant to overlap.
    int least = 0, greatest = 0;
    ANVIL_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    ANVIL_CUDA_CHECK(cudaStreamCreateWithPriority(&s.compute, cudaStreamNonBlocking, least));
    ANVIL_CUDA_CHECK(cudaStreamCreateWithPriority(&s.comm, cudaStreamNonBlocking, greatest));
  }
  return s;
}

thread_local std::unordered_map<int, std::vector<cudaStream_t>> guarded_streams;

}  // namespace

cudaStream_t current_stream(int device) {
  auto it = guarded_streams.find(device);
  if (it != guarded_streams.end() && !it->second.empty()) return it->second.back();
  return streams_of(device).compute;
}

cudaStream_t comm_stream(int device) { return streams_of(device).comm; }

void synchronize(int device) {
  DeviceGuard guard(device);
  ANVIL_CUDA_CHECK(cudaStreamSynchronize(current_stream(device)));
}

DeviceGuard::DeviceGuard(int device) {
  ANVIL_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) ANVIL_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int now = 0;
  if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
}

StreamGuard::StreamGuard(int device, cudaStream_t stream) : device_(device), previous_(current_stream(device)) {
  guarded_streams[device].push_back(stream);
}

StreamGuard::~StreamGuard() { guarded_streams[device_].pop_back(); }

Event::Event(bool timing) {
  ANVIL_CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
}

Event::~Event() {
  if (event_) cudaEventDestroy(event_);
}

Event::Event(Event&& other) noexcept : event_(other.event_) { other.event_ = nullptr; }

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (event_) cudaEventDestroy(event_);
    event_ = other.event_;
    other.event_ = nullptr;
  }
  return *this;
}

void Event::record(cudaStream_t stream) { ANVIL_CUDA_CHECK(cudaEventRecord(event_, stream)); }
void Event::wait(cudaStream_t stream) const { ANVIL_CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0)); }
void Event::synchronize() const { ANVIL_CUDA_CHECK(cudaEventSynchronize(event_)); }

bool Event::query() const {
  const cudaError_t err = cudaEventQuery(event_);
  if (err == cudaErrorNotReady) {
    cudaGetLastError();  // NotReady is also left as the thread's last error: the next launch check would report it
    return false;
  }
  ANVIL_CUDA_CHECK(err);
  return true;
}

float Event::elapsed_ms(const Event& start) const {
  float ms = 0;
  ANVIL_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
  return ms;
}

void copy_async(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  ANVIL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
}

}  // namespace anvil::cuda
