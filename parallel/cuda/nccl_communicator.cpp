// NcclCommunicator's operations (parallel/nccl_communicator.h): collectives, point-to-point
// with deferred groups, the host path for CPU tensors. Compiled only with the CUDA backend.
#include <algorithm>
#include <chrono>
#include <thread>
#include <type_traits>

#include "parallel/cuda/nccl_state.h"

namespace anvil {

using namespace nccl_detail;

namespace {

// A collective's or a batch of point-to-point operations' completion, as a comm-stream event.
class NcclHandle final : public CommHandle {
 public:
  NcclHandle(std::shared_ptr<NcclCommunicator::State> state, std::shared_ptr<NcclCommunicator::State::Batch> batch)
      : state_(std::move(state)), batch_(std::move(batch)) {}
  // Like MPI's handle, dropping one orders later work after it (device-side, cheap); a
  // deferred operation stays queued and goes out with the communicator's next operation.
  ~NcclHandle() override {
    if (waited_ || !batch_->issued) return;
    try {
      wait();
    } catch (...) {
    }
  }
  // The caller's current stream waits for the operation on the device: work queued there
  // afterwards (kernels, copies, a copy to the host) sees its result. The host does not block.
  void wait() override {
    if (waited_) return;
    if (!batch_->issued) state_->flush("wait");
    cuda::DeviceGuard guard(state_->device);
    batch_->done.wait(cuda::current_stream(state_->device));
    waited_ = true;
  }
  bool test() override {
    if (waited_) return true;
    if (!batch_->issued) return false;  // deferred: issuing it here could deadlock (see the header)
    state_->check_alive("test");
    cuda::DeviceGuard guard(state_->device);
    if (!batch_->done.query()) {
      state_->check_async("test");
      return false;
    }
    return true;
  }

 private:
  std::shared_ptr<NcclCommunicator::State> state_;
  std::shared_ptr<NcclCommunicator::State::Batch> batch_;
  bool waited_ = false;
};

// Whether `t` goes over the host communicator (CPU) or NCCL (this communicator's device).
bool use_host(const NcclCommunicator::State& s, const Tensor& t, const char* op) {
  ANVIL_CHECK(t.defined(), "NCCL ", op, ": undefined tensor");
  if (t.device().is_cpu()) {
    ANVIL_CHECK(s.host != nullptr, "NCCL ", op, " on ", t.describe(), ": this communicator (built from a shared "
                "file) has no host communicator for CPU tensors — move it to cuda:", s.device,
                " with .to(Device::cuda(", s.device, "))");
    return true;
  }
  ANVIL_CHECK(t.device().index == s.device && t.is_contiguous(), "NCCL ", op, " on ", t.describe(),
              " needs a contiguous tensor on cuda:", s.device, " (this rank's communicator device)",
              t.is_contiguous() ? "" : " — call .contiguous() first");
  return false;
}

bool use_host(const NcclCommunicator::State& s, const Tensor& a, const Tensor& b, const char* op) {
  const bool ha = use_host(s, a, op), hb = use_host(s, b, op);
  ANVIL_CHECK(ha == hb, "NCCL ", op, ": ", a.describe(), " and ", b.describe(),
              " must both be on the host or both on cuda:", s.device);
  return ha;
}

void check_peer(const NcclCommunicator::State& s, int peer, int tag, const char* op) {
  ANVIL_CHECK(peer >= 0 && peer < s.size, "NCCL ", op, ": peer ", peer, " is not a rank of this communicator (size ",
              s.size, ")");
  ANVIL_CHECK(tag >= 0 && tag <= kMaxPortableTag, "NCCL ", op, ": tag ", tag, " outside [0, ", kMaxPortableTag, "]");
}

}  // namespace

NcclCommunicator::NcclCommunicator(std::shared_ptr<State> state) : state_(std::move(state)) {}

NcclCommunicator::~NcclCommunicator() {
  // Deferred sends nobody waited for still go out, as they would under MPI.
  try {
    if (!state_->aborted) state_->flush("destroy");
  } catch (...) {
  }
}

int NcclCommunicator::rank() const { return state_->rank; }
int NcclCommunicator::size() const { return state_->size; }
int NcclCommunicator::device() const { return state_->device; }
Communicator* NcclCommunicator::host() const { return state_->host.get(); }

template <class F>
auto NcclCommunicator::on_host(const char* op, F&& f) {
  state_->flush(op);
  Communicator& host = *state_->host;
  const size_t before = host.payload_bytes();
  if constexpr (std::is_void_v<decltype(f(host))>) {
    f(host);
    count_payload(host.payload_bytes() - before);
  } else {
    auto result = f(host);
    count_payload(host.payload_bytes() - before);
    return result;
  }
}

std::unique_ptr<CommHandle> NcclCommunicator::all_reduce_async(Tensor& t, ReduceOp op) {
  State& s = *state_;
  if (use_host(s, t, "all_reduce_async"))
    return on_host("all_reduce_async", [&](Communicator& h) { return h.all_reduce_async(t, op); });
  count_payload(t.nbytes());
  cuda::DeviceGuard guard(s.device);
  const cudaStream_t stream = s.enter("all_reduce");
  if (t.numel() > 0)
    s.check(ncclAllReduce(t.raw_data(), t.raw_data(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()),
                          nccl_op(op), s.comm, stream),
            "all_reduce");
  return std::make_unique<NcclHandle>(state_, s.leave(stream, {&t}));
}

void NcclCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  if (use_host(*state_, t, "all_reduce"))
    return on_host("all_reduce", [&](Communicator& h) { h.all_reduce(t, op); });
  all_reduce_async(t, op)->wait();
}

std::unique_ptr<CommHandle> NcclCommunicator::reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) {
  State& s = *state_;
  if (use_host(s, in, out, "reduce_scatter_async"))
    return on_host("reduce_scatter_async", [&](Communicator& h) { return h.reduce_scatter_async(in, out, op); });
  ANVIL_CHECK(in.numel() == out.numel() * s.size && in.dtype() == out.dtype(), "reduce_scatter: input ",
              in.describe(), " must hold ", s.size, " x output ", out.describe(), " of the same dtype");
  count_payload(in.nbytes());
  cuda::DeviceGuard guard(s.device);
  const cudaStream_t stream = s.enter("reduce_scatter");
  if (out.numel() > 0)
    s.check(ncclReduceScatter(in.raw_data(), out.raw_data(), static_cast<size_t>(out.numel()), nccl_type(in.dtype()),
                              nccl_op(op), s.comm, stream),
            "reduce_scatter");
  return std::make_unique<NcclHandle>(state_, s.leave(stream, {&in, &out}));
}

void NcclCommunicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  if (use_host(*state_, in, out, "reduce_scatter"))
    return on_host("reduce_scatter", [&](Communicator& h) { h.reduce_scatter(in, out, op); });
  reduce_scatter_async(in, out, op)->wait();
}

void NcclCommunicator::all_gather(const Tensor& in, Tensor& out) {
  State& s = *state_;
  if (use_host(s, in, out, "all_gather")) return on_host("all_gather", [&](Communicator& h) { h.all_gather(in, out); });
  ANVIL_CHECK(out.numel() == in.numel() * s.size && in.dtype() == out.dtype(), "all_gather: output ", out.describe(),
              " must hold ", s.size, " x input ", in.describe(), " of the same dtype");
  count_payload(in.nbytes());
  cuda::DeviceGuard guard(s.device);
  const cudaStream_t stream = s.enter("all_gather");
  if (in.numel() > 0)
    s.check(ncclAllGather(in.raw_data(), out.raw_data(), static_cast<size_t>(in.numel()), nccl_type(in.dtype()),
                          s.comm, stream),
            "all_gather");
  NcclHandle(state_, s.leave(stream, {&in, &out})).wait();
}

void NcclCommunicator::all_to_all(const Tensor& in, Tensor& out) {
  State& s = *state_;
  if (use_host(s, in, out, "all_to_all")) return on_host("all_to_all", [&](Communicator& h) { h.all_to_all(in, out); });
  ANVIL_CHECK(in.numel() == out.numel() && in.numel() % s.size == 0 && in.dtype() == out.dtype(), "all_to_all: ",
              in.describe(), " and ", out.describe(), " must be equal and split into ", s.size, " chunks");
  const std::vector<int64_t> counts(static_cast<size_t>(s.size), in.numel() / s.size);
  all_to_allv(in, counts, out, counts);
}

void NcclCommunicator::all_to_allv(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                                   const std::vector<int64_t>& recv_counts) {
  State& s = *state_;
  if (use_host(s, in, out, "all_to_allv"))
    return on_host("all_to_allv", [&](Communicator& h) { h.all_to_allv(in, send_counts, out, recv_counts); });
  ANVIL_CHECK(static_cast<int>(send_counts.size()) == s.size && static_cast<int>(recv_counts.size()) == s.size,
              "all_to_allv: need one send and one receive count per rank (", s.size, "), got ", send_counts.size(),
              " and ", recv_counts.size());
  ANVIL_CHECK(in.dtype() == out.dtype(), "all_to_allv: ", in.describe(), " and ", out.describe(),
              " must have one dtype");
  int64_t s_total = 0, r_total = 0;
  for (int i = 0; i < s.size; ++i) {
    ANVIL_CHECK(send_counts[i] >= 0 && recv_counts[i] >= 0, "all_to_allv: negative count for rank ", i);
    s_total += send_counts[i];
    r_total += recv_counts[i];
  }
  ANVIL_CHECK(s_total <= in.numel() && r_total <= out.numel(), "all_to_allv: counts (", s_total, " out, ", r_total,
              " in) exceed the buffers ", in.describe(), " / ", out.describe());
  ANVIL_CHECK(send_counts[s.rank] == recv_counts[s.rank], "all_to_allv: rank ", s.rank, " sends itself ",
              send_counts[s.rank], " elements but expects ", recv_counts[s.rank]);
  count_payload(static_cast<size_t>(s_total) * dtype_size(in.dtype()));
  const size_t elem = dtype_size(in.dtype());
  const ncclDataType_t type = nccl_type(in.dtype());
  cuda::DeviceGuard guard(s.device);
  const cudaStream_t stream = s.enter("all_to_allv");
  auto* src = static_cast<char*>(in.raw_data());
  auto* dst = static_cast<char*>(out.raw_data());
  std::vector<State::Transfer> transfers;
  int64_t s_off = 0, r_off = 0;
  for (int p = 0; p < s.size; ++p) {
    if (p == s.rank) {  // this rank's own chunk is a device copy
      cuda::copy_async(dst + r_off * elem, src + s_off * elem, static_cast<size_t>(send_counts[p]) * elem, stream);
    } else {
      if (send_counts[p] > 0) transfers.push_back({true, src + s_off * elem, static_cast<size_t>(send_counts[p]), type, p});
      if (recv_counts[p] > 0) transfers.push_back({false, dst + r_off * elem, static_cast<size_t>(recv_counts[p]), type, p});
    }
    s_off += send_counts[p];
    r_off += recv_counts[p];
  }
  if (!transfers.empty()) s.run_group(transfers, stream, "all_to_allv");
  NcclHandle(state_, s.leave(stream, {&in, &out})).wait();
}

void NcclCommunicator::broadcast(Tensor& t, int root) {
  State& s = *state_;
  if (use_host(s, t, "broadcast")) return on_host("broadcast", [&](Communicator& h) { h.broadcast(t, root); });
  ANVIL_CHECK(root >= 0 && root < s.size, "broadcast: root ", root, " is not a rank of this communicator (size ",
              s.size, ")");
  if (s.rank == root) count_payload(t.nbytes());
  cuda::DeviceGuard guard(s.device);
  const cudaStream_t stream = s.enter("broadcast");
  if (t.numel() > 0)
    s.check(ncclBroadcast(t.raw_data(), t.raw_data(), static_cast<size_t>(t.numel()), nccl_type(t.dtype()), root,
                          s.comm, stream),
            "broadcast");
  NcclHandle(state_, s.leave(stream, {&t})).wait();
}

std::unique_ptr<CommHandle> NcclCommunicator::isend(const Tensor& t, int dst, int tag) {
  State& s = *state_;
  if (use_host(s, t, "isend")) return on_host("isend", [&](Communicator& h) { return h.isend(t, dst, tag); });
  check_peer(s, dst, tag, "isend");
  s.check_alive("isend");
  count_payload(t.nbytes());
  return std::make_unique<NcclHandle>(state_, s.post(true, t, dst));
}

std::unique_ptr<CommHandle> NcclCommunicator::irecv(Tensor& t, int src, int tag) {
  State& s = *state_;
  if (use_host(s, t, "irecv")) return on_host("irecv", [&](Communicator& h) { return h.irecv(t, src, tag); });
  check_peer(s, src, tag, "irecv");
  s.check_alive("irecv");
  return std::make_unique<NcclHandle>(state_, s.post(false, t, src));
}

void NcclCommunicator::send(const Tensor& t, int dst, int tag) {
  if (use_host(*state_, t, "send")) return on_host("send", [&](Communicator& h) { h.send(t, dst, tag); });
  isend(t, dst, tag)->wait();
}

void NcclCommunicator::recv(Tensor& t, int src, int tag) {
  if (use_host(*state_, t, "recv")) return on_host("recv", [&](Communicator& h) { h.recv(t, src, tag); });
  irecv(t, src, tag)->wait();
}

void NcclCommunicator::barrier() {
  State& s = *state_;
  cuda::DeviceGuard guard(s.device);
  const cudaStream_t stream = s.enter("barrier");
  // Max of zeros: the word stays 0 however many barriers run.
  s.check(ncclAllReduce(s.barrier_word.raw_data(), s.barrier_word.raw_data(), 1, ncclInt32, ncclMax, s.comm, stream),
          "barrier");
  cuda::Event done;
  done.record(stream);
  // Polled rather than synchronized, so a failed peer surfaces as NCCL's error (or the
  // watchdog's abort) instead of a wait that never ends.
  auto pause = std::chrono::microseconds(20);
  while (!done.query()) {
    s.check_alive("barrier");
    s.check_async("barrier");
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(2000));
  }
}

}  // namespace anvil
