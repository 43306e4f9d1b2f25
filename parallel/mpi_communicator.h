// The MPI backend of Communicator (Open MPI), and process-wide MPI start-up.
#pragma once
#include <mpi.h>

#include "parallel/communicator.h"

namespace anvil {

// The rank and world size a launcher (mpirun, srun, hydra) gave this process, read
// from its environment without initialising MPI: {0, 1, false} when started alone.
// Lets every rank run the launch checks before any collective.
struct LaunchInfo {
  int rank = 0;
  int size = 1;
  bool launched = false;
};
LaunchInfo launch_info();

// Initialises MPI once (thread level FUNNELED) and finalises it at exit. Works
// under mpirun/srun and as a singleton without a launcher.
void ensure_mpi_initialized();

class MpiCommunicator final : public Communicator {
 public:
  // The world (a private duplicate of MPI_COMM_WORLD, so our traffic never mixes with a user's).
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
