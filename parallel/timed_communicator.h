// TimedCommunicator: a Communicator that forwards to another and adds up the wall time
// this rank spent blocked in communication (blocking collectives, and the wait() of async
// ones: the part that backward did not hide). Sub-communicators from split() share the
// counter, so one number covers every axis of the grid. The trainer reports it per rank.
#pragma once
#include <memory>

#include "parallel/communicator.h"

namespace anvil {

struct CommClock {
  double seconds = 0;  // blocked in communication since construction
};

class TimedCommunicator final : public Communicator {
 public:
  explicit TimedCommunicator(std::shared_ptr<Communicator> inner,
                             std::shared_ptr<CommClock> clock = std::make_shared<CommClock>());

  const CommClock& clock() const { return *clock_; }
  const Communicator& inner() const { return *inner_; }

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
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
  void barrier() override;
  std::unique_ptr<CommHandle> isend(const Tensor& t, int dst, int tag) override;
  std::unique_ptr<CommHandle> irecv(Tensor& t, int src, int tag) override;
  std::unique_ptr<Communicator> split(int color, int key) const override;
  Communicator& backend() override { return inner_->backend(); }

 private:
  std::shared_ptr<Communicator> inner_;
  std::shared_ptr<CommClock> clock_;
};

// The communication clock behind `comm` when it is a TimedCommunicator, else null.
const CommClock* comm_clock(const Communicator* comm);

}  // namespace anvil
