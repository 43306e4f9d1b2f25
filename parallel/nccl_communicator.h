// The NCCL backend of Communicator (CUDA tensors), how its ranks find each other (the
// unique id over an MPI communicator, or through a shared file), and which GPU a rank uses.
// Declared in every build; in a CPU-only build the factories throw an Error that says so.
//
// Streams. Every NCCL operation runs on cuda::comm_stream(device). Before it, the comm
// stream waits for an event recorded on the caller's current stream, so the inputs written
// there are ready. The async variants return a handle holding an event recorded on the comm
// stream after the operation: wait() makes the caller's current stream wait for it on the
// device (the host does not block), so the compute work issued after wait() is ordered after
// the collective; test() asks whether the event has completed. The blocking variants are the
// async ones plus wait(): they return before the data has arrived, and anything that reads it
// on the current stream (a kernel, a copy to the host) sees it. Buffers are marked with
// cuda::record_stream for the comm stream, so the caching allocator does not hand their
// memory out again while the collective may still use it.
//
// Host tensors. A CPU tensor given to a NCCL communicator goes over its host communicator
// (the MPI communicator of the same ranks it was built from), so small host-side values
// (token counts, losses, norms) can be reduced over the grid's axes as before.
//
// Point-to-point. NCCL has no tags: messages between two ranks match in the order they were
// posted, per direction (the tag is checked and ignored; the pipeline executor's messages
// of each direction go in micro-batch order on both sides). Counts must match exactly. A
// NCCL send may wait on the device until its receive is posted, so two neighbours that send
// before they receive would deadlock on their comm streams (NCCL issue #479). isend and irecv
// are therefore deferred: they are issued together, in one ncclGroupStart/End, at this
// communicator's next operation (collective, send, recv, split, barrier) or the first wait()
// on any of its handles. test() on a deferred operation returns false and issues nothing (the
// pipeline executor polls its sends after every action; issuing them there would bring the
// deadlock back). The first exchange with a peer also carries a one-byte message each way,
// so NCCL sets up both directions of the connection at once (it connects lazily and one
// direction at a time: a rank that connects only to receive waits for the peer to connect).
//
// Ordering across communicators: all of them share the comm stream, so their operations run
// in the order this process issued them; every rank must issue collectives that involve each
// other in the same order (as with MPI).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace anvil {

constexpr size_t kNcclIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES

// ---- which GPU ----------------------------------------------------------------------------

// This rank's index among the ranks of its node: the launcher's (OMPI_COMM_WORLD_LOCAL_RANK,
// SLURM_LOCALID, MPI_LOCALRANKID; parallel/launch.h) when one started the job, else the rank
// in the MPI_COMM_TYPE_SHARED split of `host` (collective over host in that case), else 0.
int node_local_rank(Communicator* host);

// local_rank modulo the visible devices (so one device per rank when each task sees only its
// own GPU, as with srun --gpus-per-task=1). Throws when no device is visible.
int cuda_device_for_local_rank(int local_rank, int visible_devices);

// The device this rank should use: cuda_device_for_local_rank(node_local_rank(host),
// cuda_device_count()). Collective over host when node_local_rank is.
int cuda_device_for_rank(Communicator* host);

// ---- bootstrap: rank 0's unique id to every rank ------------------------------------------

// `bytes` (significant on root, n of them) on every rank of `host`, as a U8 host tensor
// broadcast (host: an MPI-backed communicator).
std::vector<uint8_t> broadcast_bytes(Communicator& host, const std::vector<uint8_t>& bytes, size_t n, int root = 0);

// The shared-file exchange for launches without a working MPI (srun without PMIx, say):
// rank 0 writes DIR/nccl_id.TAG atomically (a temporary file renamed into place), the others
// wait for it. TAG must be unique to the launch and to the communicator: a file left by an
// earlier launch under the same name would be read as this one's.
struct SharedFileId {
  std::string dir;
  std::string tag = "world";
  double timeout_s = 120;
};
std::string shared_id_path(const SharedFileId& where);

// The default: DIR = $ANVIL_NCCL_ID_DIR, else the rendezvous directory of this job step
// (parallel/rendezvous.h: ./.anvil-rendezvous/job<id>.step<id>.restart<n>, shared by the
// ranks of a Slurm step); timeout $ANVIL_NCCL_ID_TIMEOUT seconds, else 120.
SharedFileId default_shared_id(const std::string& tag = "world");

// Rank 0 publishes `root_bytes` (n of them) and returns them; every other rank waits up to
// where.timeout_s for the file and returns its n bytes. Throws naming the file and the fix on
// a timeout or a file of the wrong size.
std::vector<uint8_t> exchange_id_via_file(const SharedFileId& where, int rank, const std::vector<uint8_t>& root_bytes,
                                          size_t n);
// Rank 0, once every rank has read the id (after the NCCL communicator is up): removes it.
void remove_shared_id(const SharedFileId& where);

// ---- factories ----------------------------------------------------------------------------

// A NCCL communicator over the ranks of `host` (same ranks, same order): rank 0's unique id is
// broadcast over host, which also carries the CPU tensors given to the result (see above).
// device -1: cuda_device_for_rank(host.get()). Collective over host.
std::unique_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> host, int device = -1);

// The same without MPI: the id travels through the shared file; rank and size come from the
// launcher. The result has no host communicator (CPU tensors are an error on it).
std::unique_ptr<Communicator> make_nccl_communicator(int rank, int size, const SharedFileId& where, int device = -1);

// What ProcessGrid splits its per-axis communicators from (grid.h), for run.device:
//   "cpu"  -> null: the grid splits `world` itself (MPI, host tensors), as before;
//   "cuda" -> a NCCL communicator over world's ranks on `device` (-1: cuda_device_for_rank).
// world stays the job's host communicator (metadata, checkpoints, the watchdog).
std::shared_ptr<Communicator> grid_collective_world(std::shared_ptr<Communicator> world,
                                                    const std::string& run_device, int device = -1);

// True when this build has the NCCL backend.
bool nccl_built();

// Aborts every live NCCL communicator of this process (ncclCommAbort: the kernels waiting
// for a lost peer end, and host calls blocked in NCCL return). For the peer watchdog before
// it exits; gives up after timeout_s (abort can itself hang on a broken network). Returns how
// many it aborted. Safe from any thread; a no-op without the CUDA backend.
int abort_nccl_communicators(double timeout_s = 10);

// ---- the communicator ---------------------------------------------------------------------

class NcclCommunicator final : public Communicator {
 public:
  struct State;  // the NCCL handle and the deferred point-to-point queue (nccl_communicator.cpp)
  explicit NcclCommunicator(std::shared_ptr<State> state);
  ~NcclCommunicator() override;

  int rank() const override;
  int size() const override;
  int device() const;
  // The communicator CPU tensors go over (null when built from a shared file).
  Communicator* host() const;

  void all_reduce(Tensor& t, ReduceOp op) override;
  std::unique_ptr<CommHandle> all_reduce_async(Tensor& t, ReduceOp op) override;
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override;
  std::unique_ptr<CommHandle> reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override;
  void all_gather(const Tensor& in, Tensor& out) override;
  void all_to_all(const Tensor& in, Tensor& out) override;
  void all_to_allv(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                   const std::vector<int64_t>& recv_counts) override;
  void broadcast(Tensor& t, int root) override;
  void send(const Tensor& t, int dst, int tag) override;
  void recv(Tensor& t, int src, int tag) override;
  std::unique_ptr<CommHandle> isend(const Tensor& t, int dst, int tag) override;
  std::unique_ptr<CommHandle> irecv(Tensor& t, int src, int tag) override;
  // Host-blocking: returns once every rank has reached it and this rank's earlier operations
  // on the comm stream have finished (a one-element all-reduce, then a wait for its event).
  void barrier() override;
  // ncclCommSplit (collective over this communicator), with the host communicator split alike.
  std::unique_ptr<Communicator> split(int color, int key) const override;

  // Ends this communicator's operations in flight (ncclCommAbort); it is unusable afterwards.
  void abort();

 private:
  // f(host communicator) for CPU tensors, after the deferred device operations went out;
  // counts the payload the host counted.
  template <class F>
  auto on_host(const char* op, F&& f);

  std::shared_ptr<State> state_;
};

}  // namespace anvil
