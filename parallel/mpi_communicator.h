// The MPI backend of Communicator (Open MPI), and process-wide MPI start-up.
#pragma once
#include <mpi.h>

#include "parallel/communicator.h"
#include "parallel/launch.h"

namespace anvil {

// launch_info(): rank, size and layout from the launcher's environment (parallel/launch.h).

// Initialises MPI once (thread level FUNNELED) and finalises it at exit. Works under
// mpirun, srun with PMIx, srun without PMIx (the file rendezvous of parallel/rendezvous.h)
// and as a singleton without a launcher.
void ensure_mpi_initialized();

// The job's world: MPI_COMM_WORLD, or the communicator the file rendezvous joined.
MPI_Comm world_comm();

// Ends the job on every rank after an error one rank met alone (MPI_Abort on the world).
[[noreturn]] void abort_job(int code);

class MpiCommunicator final : public Communicator {
 public:
  // The world (a private duplicate of world_comm(), so our traffic never mixes with a user's).
  static std::unique_ptr<MpiCommunicator> world();
  explicit MpiCommunicator(MPI_Comm comm);  // takes ownership
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
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
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) const override;

  MPI_Comm handle() const { return comm_; }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

}  // namespace anvil
