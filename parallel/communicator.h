// Communicator: the collectives every parallel layer is built from. Backends: MPI
// (host buffers; the CPU path and the bootstrap) and, with the CUDA backend, NCCL.
// Tensors must be contiguous; counts are in elements of the tensor's dtype.
#pragma once
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace anvil {

enum class ReduceOp { Sum, Max, Min };

// The largest message tag every MPI implementation accepts (the standard's minimum MPI_TAG_UB).
constexpr int kMaxPortableTag = 32767;

// An operation in flight; wait() returns once its buffers may be read or reused.
class CommHandle {
 public:
  virtual ~CommHandle() = default;
  virtual void wait() = 0;
  // Whether it has finished, without blocking (and helping it progress); true after wait().
  virtual bool test() = 0;
};

// A handle for work that finished before it was returned.
class DoneHandle final : public CommHandle {
 public:
  void wait() override {}
  bool test() override { return true; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place over every rank.
  virtual void all_reduce(Tensor& t, ReduceOp op = ReduceOp::Sum) = 0;
  virtual std::unique_ptr<CommHandle> all_reduce_async(Tensor& t, ReduceOp op = ReduceOp::Sum) = 0;
  // in: size() * n elements; out: n elements = this rank's chunk of the reduction.
  virtual void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op = ReduceOp::Sum) = 0;
  // The same in flight (in and out must stay alive and untouched until wait()). The
  // default runs the blocking collective and returns a finished handle.
  virtual std::unique_ptr<CommHandle> reduce_scatter_async(const Tensor& in, Tensor& out,
                                                           ReduceOp op = ReduceOp::Sum);
  // in: n elements; out: size() * n, rank r's contribution at [r*n, (r+1)*n).
  virtual void all_gather(const Tensor& in, Tensor& out) = 0;
  // in and out: size() equal chunks; chunk j of `in` goes to rank j, chunk i of `out` came from rank i.
  virtual void all_to_all(const Tensor& in, Tensor& out) = 0;
  // Variable chunks (element counts per peer, and displacements implied by the order).
  virtual void all_to_allv(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                           const std::vector<int64_t>& recv_counts) = 0;
  virtual void broadcast(Tensor& t, int root) = 0;
  virtual void send(const Tensor& t, int dst, int tag = 0) = 0;
  virtual void recv(Tensor& t, int src, int tag = 0) = 0;
  // Non-blocking point-to-point: the handle keeps t's storage alive until it finishes; an
  // isend's t must not be written and an irecv's t not read before wait(). Two neighbours
  // that both send before they receive deadlock with blocking sends of large messages
  // (rendezvous); with isend they do not (the pipeline executor relies on this).
  virtual std::unique_ptr<CommHandle> isend(const Tensor& t, int dst, int tag = 0) = 0;
  virtual std::unique_ptr<CommHandle> irecv(Tensor& t, int src, int tag = 0) = 0;
  virtual void barrier() = 0;

  // A new communicator of the ranks sharing `color`, ordered by `key` (MPI_Comm_split).
  virtual std::unique_ptr<Communicator> split(int color, int key) const = 0;

  // The backend communicator doing the work: this one, or the one a wrapper (timing,
  // say) forwards to. Code that needs the backend's own handle (MPI-IO) looks here.
  virtual Communicator& backend() { return *this; }

  // Bytes this rank handed to collectives and sends since construction (payload
  // sizes, not what the algorithm moved on the wire): for the comm benchmarks.
  size_t payload_bytes() const { return payload_bytes_; }

 protected:
  void count_payload(size_t bytes) { payload_bytes_ += bytes; }

 private:
  size_t payload_bytes_ = 0;
};

inline std::unique_ptr<CommHandle> Communicator::reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) {
  reduce_scatter(in, out, op);
  return std::make_unique<DoneHandle>();
}

}  // namespace anvil
