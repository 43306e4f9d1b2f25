// PeerWatchdog: notices when another rank of the job is gone, so the survivors stop with a
// message naming it instead of waiting forever in a collective the lost rank will never
// join. Every rank owns DIR/rank_<r> ("host pid") and touches it every second or so from a
// background thread; the same thread checks its peers: a peer on the same host whose
// process no longer exists is lost at once, a peer anywhere whose file has not changed for
// `timeout_s` seconds is lost then. A rank that ends normally first writes DIR/rank_<r>.done.
// DIR must be on a file system every node shares (the run directory is).
#pragma once
#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "parallel/communicator.h"

namespace anvil {

class PeerWatchdog {
 public:
  // What to do when a peer is lost: the default prints `message`, aborts the process's NCCL
  // communicators (abort_nccl_communicators) and exits the process with `exit_code` at once
  // (the main thread may be blocked inside MPI or waiting for a GPU).
  using LostHandler = std::function<void(int lost_rank, const std::string& message)>;

  // A collective over `world` (all ranks construct it together).
  PeerWatchdog(Communicator& world, const std::string& dir, double timeout_s, int exit_code,
               LostHandler on_lost = nullptr);
  // Marks this rank done (it ended normally) and stops the thread.
  ~PeerWatchdog();
  PeerWatchdog(const PeerWatchdog&) = delete;
  PeerWatchdog& operator=(const PeerWatchdog&) = delete;

  void mark_done();

 private:
  void run();

  std::string dir_;
  int rank_, size_;
  double timeout_s_;
  int exit_code_;
  LostHandler on_lost_;
  std::string host_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace anvil
