#include "parallel/timed_communicator.h"

#include <chrono>

namespace anvil {

namespace {

using Clock = std::chrono::steady_clock;

// Adds the scope's wall time to the clock.
class Timed {
 public:
  explicit Timed(CommClock& clock) : clock_(clock), t0_(Clock::now()) {}
  ~Timed() { clock_.seconds += std::chrono::duration<double>(Clock::now() - t0_).count(); }

 private:
  CommClock& clock_;
  Clock::time_point t0_;
};

class TimedHandle final : public CommHandle {
 public:
  TimedHandle(std::unique_ptr<CommHandle> inner, std::shared_ptr<CommClock> clock)
      : inner_(std::move(inner)), clock_(std::move(clock)) {}
  void wait() override {
    Timed t(*clock_);
    inner_->wait();
  }
  bool test() override { return inner_->test(); }

 private:
  std::unique_ptr<CommHandle> inner_;
  std::shared_ptr<CommClock> clock_;
};

}  // namespace

TimedCommunicator::TimedCommunicator(std::shared_ptr<Communicator> inner, std::shared_ptr<CommClock> clock)
    : inner_(std::move(inner)), clock_(std::move(clock)) {}

void TimedCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  Timed timed(*clock_);
  count_payload(t.nbytes());
  inner_->all_reduce(t, op);
}

std::unique_ptr<CommHandle> TimedCommunicator::all_reduce_async(Tensor& t, ReduceOp op) {
  count_payload(t.nbytes());
  Timed timed(*clock_);  // posting can block too
  return std::make_unique<TimedHandle>(inner_->all_reduce_async(t, op), clock_);
}

void TimedCommunicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  Timed timed(*clock_);
  count_payload(in.nbytes());
  inner_->reduce_scatter(in, out, op);
}

std::unique_ptr<CommHandle> TimedCommunicator::reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) {
  count_payload(in.nbytes());
  Timed timed(*clock_);
  return std::make_unique<TimedHandle>(inner_->reduce_scatter_async(in, out, op), clock_);
}

void TimedCommunicator::all_gather(const Tensor& in, Tensor& out) {
  Timed timed(*clock_);
  count_payload(in.nbytes());
  inner_->all_gather(in, out);
}

void TimedCommunicator::all_to_all(const Tensor& in, Tensor& out) {
  Timed timed(*clock_);
  count_payload(in.nbytes());
  inner_->all_to_all(in, out);
}

void TimedCommunicator::all_to_allv(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                                    const std::vector<int64_t>& recv_counts) {
  Timed timed(*clock_);
  inner_->all_to_allv(in, send_counts, out, recv_counts);
}

void TimedCommunicator::broadcast(Tensor& t, int root) {
  Timed timed(*clock_);
  if (rank() == root) count_payload(t.nbytes());
  inner_->broadcast(t, root);
}

void TimedCommunicator::send(const Tensor& t, int dst, int tag) {
  Timed timed(*clock_);
  count_payload(t.nbytes());
  inner_->send(t, dst, tag);
}

void TimedCommunicator::recv(Tensor& t, int src, int tag) {
  Timed timed(*clock_);
  inner_->recv(t, src, tag);
}

void TimedCommunicator::barrier() {
  Timed timed(*clock_);
  inner_->barrier();
}

std::unique_ptr<CommHandle> TimedCommunicator::isend(const Tensor& t, int dst, int tag) {
  count_payload(t.nbytes());
  Timed timed(*clock_);
  return std::make_unique<TimedHandle>(inner_->isend(t, dst, tag), clock_);
}

std::unique_ptr<CommHandle> TimedCommunicator::irecv(Tensor& t, int src, int tag) {
  Timed timed(*clock_);
  return std::make_unique<TimedHandle>(inner_->irecv(t, src, tag), clock_);
}

std::unique_ptr<Communicator> TimedCommunicator::split(int color, int key) const {
  return std::make_unique<TimedCommunicator>(std::shared_ptr<Communicator>(inner_->split(color, key)), clock_);
}

const CommClock* comm_clock(const Communicator* comm) {
  const auto* timed = dynamic_cast<const TimedCommunicator*>(comm);
  return timed ? &timed->clock() : nullptr;
}

}  // namespace anvil
