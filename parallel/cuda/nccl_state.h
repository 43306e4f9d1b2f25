// The state a NcclCommunicator shares with its handles, and the NCCL helpers its two source
// files use (nccl_communicator.cpp: the operations; nccl_init.cpp: creating, splitting and
// aborting communicators). Private to parallel/cuda.
#pragma once
#include <nccl.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/cuda/runtime.h"
#include "parallel/nccl_communicator.h"

namespace anvil {

namespace nccl_detail {

inline ncclDataType_t nccl_type(DType dt) {
  switch (dt) {
    case DType::F32: return ncclFloat32;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::U8: return ncclUint8;
    case DType::I8: return ncclInt8;
  }
  ANVIL_FAIL("NCCL: no data type for dtype ", static_cast<int>(dt));
}

inline ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
  }
  return ncclSum;
}

inline const char* nccl_hint(ncclResult_t r) {
  switch (r) {
    case ncclUnhandledCudaError:
      return " — a CUDA call inside NCCL failed (out of memory, or an earlier kernel faulted; run with "
             "CUDA_LAUNCH_BLOCKING=1 to find it)";
    case ncclSystemError:
      return " — a system call or the network failed: NCCL_DEBUG=WARN names it (check NCCL_SOCKET_IFNAME and the "
             "InfiniBand set-up)";
    case ncclRemoteError: return " — a peer failed or left the job: look at the other ranks' errors";
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return " — the ranks disagree (counts, dtypes, roots), or two ranks of one communicator share a GPU; "
             "NCCL_DEBUG=WARN says which";
    default: return " — NCCL_DEBUG=WARN (or INFO) prints NCCL's own account";
  }
}

}  // namespace nccl_detail

// What a NcclCommunicator and its handles share: the NCCL handle, the device buffers it
// keeps, and the deferred point-to-point operations (see the header).
struct NcclCommunicator::State {
  struct Batch {  // deferred operations issued together, and the event after them
    bool issued = false;
    cuda::Event done;
  };
  struct P2p {
    bool send = false;
    Tensor buffer;
    int peer = 0;
    cuda::Event ready;  // recorded on the caller's stream when it was posted
  };

  ncclComm_t comm = nullptr;
  int device = 0, rank = 0, size = 1;
  std::shared_ptr<Communicator> host;
  std::atomic<bool> aborted{false};
  cuda::Event ready;         // the caller's stream, recorded before each immediate operation
  Tensor scratch;            // u8 [size + 1]: the connection messages (one slot per peer, one to send)
  Tensor barrier_word;       // i32 [1]
  std::vector<char> connected;  // peers both directions of whose connection exist
  std::vector<P2p> pending;
  std::shared_ptr<Batch> batch;  // what `pending` will be issued as

  State(ncclComm_t c, int dev, int r, int n, std::shared_ptr<Communicator> h);
  ~State();

  void check(ncclResult_t r, const char* op) const {
    if (r == ncclSuccess) return;
    const char* last = comm ? ncclGetLastError(comm) : ncclGetLastError(nullptr);
    ANVIL_FAIL("NCCL ", op, " failed on rank ", rank, " of ", size, " (cuda:", device, "): ", ncclGetErrorString(r),
               last && *last ? std::string(" (") + last + ")" : std::string(), nccl_detail::nccl_hint(r));
  }
  void check_alive(const char* op) const {
    ANVIL_CHECK(!aborted, "NCCL ", op, " on an aborted communicator (rank ", rank, " of ", size,
                ") — a peer was lost and the job is stopping");
  }
  void check_async(const char* op) const {
    ncclResult_t async = ncclSuccess;
    check(ncclCommGetAsyncError(comm, &async), op);
    if (async != ncclInProgress) check(async, op);
  }

  // The comm stream, after it has waited for the work the caller queued so far.
  cudaStream_t enter(const char* op) {
    check_alive(op);
    flush(op);
    const cudaStream_t stream = cuda::comm_stream(device);
    ready.record(cuda::current_stream(device));
    ready.wait(stream);
    return stream;
  }

  // After the operation: keep its buffers from reuse until the comm stream is past it, and
  // hand back the event that marks its end.
  std::shared_ptr<Batch> leave(cudaStream_t stream, std::initializer_list<const Tensor*> buffers) {
    for (const Tensor* t : buffers) cuda::record_stream(*t, stream);
    auto b = std::make_shared<Batch>();
    b->done.record(stream);
    b->issued = true;
    return b;
  }

  struct Transfer {
    bool send;
    void* data;
    size_t count;
    ncclDataType_t type;
    int peer;
  };
  // One group of sends and receives; the first exchange with a peer carries a byte each way
  // first, so both directions of the connection are set up in this group (see the header).
  void run_group(const std::vector<Transfer>& transfers, cudaStream_t stream, const char* op) {
    std::vector<int> fresh;
    for (const Transfer& x : transfers)
      if (x.peer != rank && !connected[x.peer]) {
        connected[x.peer] = 1;
        fresh.push_back(x.peer);
      }
    auto* bytes = static_cast<uint8_t*>(scratch.raw_data());
    ncclResult_t first_error = ncclSuccess;
    auto keep = [&](ncclResult_t r) {
      if (first_error == ncclSuccess) first_error = r;
    };
    check(ncclGroupStart(), op);
    for (int p : fresh) {
      keep(ncclSend(bytes + size, 1, ncclUint8, p, comm, stream));
      keep(ncclRecv(bytes + p, 1, ncclUint8, p, comm, stream));
    }
    for (const Transfer& x : transfers)
      keep(x.send ? ncclSend(x.data, x.count, x.type, x.peer, comm, stream)
                  : ncclRecv(x.data, x.count, x.type, x.peer, comm, stream));
    const ncclResult_t end = ncclGroupEnd();  // always closes the group, even after an error inside it
    check(first_error, op);
    check(end, op);
  }

  // Issues the deferred sends and receives as one group.
  void flush(const char* op) {
    if (pending.empty()) return;
    check_alive(op);
    cuda::DeviceGuard guard(device);
    const cudaStream_t stream = cuda::comm_stream(device);
    std::vector<Transfer> transfers;
    for (P2p& p : pending) {
      p.ready.wait(stream);
      if (p.buffer.numel() > 0)
        transfers.push_back({p.send, p.buffer.raw_data(), static_cast<size_t>(p.buffer.numel()),
                             nccl_detail::nccl_type(p.buffer.dtype()), p.peer});
    }
    run_group(transfers, stream, op);
    for (const P2p& p : pending) cuda::record_stream(p.buffer, stream);
    std::shared_ptr<Batch> b = std::move(batch);
    b->done.record(stream);
    b->issued = true;
    pending.clear();
  }

  std::shared_ptr<Batch> post(bool send, const Tensor& t, int peer) {
    cuda::DeviceGuard guard(device);
    P2p p;
    p.send = send;
    p.buffer = t;
    p.peer = peer;
    p.ready.record(cuda::current_stream(device));
    pending.push_back(std::move(p));
    if (!batch) batch = std::make_shared<Batch>();
    return batch;
  }
};

}  // namespace anvil
