#include "parallel/peer_watchdog.h"


#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "parallel/collectives.h"
#include "parallel/nccl_communicator.h"

namespace anvil {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

std::string rank_file(const std::string& dir, int r) { return dir + "/rank_" + std::to_string(r); }

struct Peer {
  std::string host;
  long pid = 0;
  timespec mtime{};
  Clock::time_point last_change;
};

bool read_peer(const std::string& path, Peer& p) {
  std::ifstream in(path);
  return static_cast<bool>(in >> p.host >> p.pid);
}

}  // namespace

PeerWatchdog::PeerWatchdog(Communicator& world, const std::string& dir, double timeout_s, int exit_code,
                           LostHandler on_lost)
    : dir_(dir), rank_(world.rank()), size_(world.size()), timeout_s_(timeout_s), exit_code_(exit_code),
      on_lost_(std::move(on_lost)) {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  host_ = host;
  // Every rank must watch the same directory, or nobody would see anybody's heartbeat.
  const std::vector<std::string> dirs = all_gather_strings(world, fs::absolute(dir_).lexically_normal().string());
  for (size_t r = 1; r < dirs.size(); ++r)
    ANVIL_CHECK(dirs[r] == dirs[0], "the ranks' heartbeat directories differ (rank 0: ", dirs[0], ", rank ", r, ": ",
                dirs[r], ") — run.out_dir must name one directory every rank shares, or set run.peer_timeout: 0 "
                "to run without the peer watchdog");
  if (rank_ == 0) {  // a fresh directory: files of an earlier run must not count
    std::error_code ec;
    fs::remove_all(dir_, ec);
    fs::create_directories(dir_);
  }
  world.barrier();
  std::string failure;  // decided together below, so a rank that cannot write does not strand the others
  try {
    const std::string tmp = rank_file(dir_, rank_) + ".tmp";
    std::ofstream(tmp) << host_ << " " << static_cast<long>(getpid()) << "\n";
    fs::rename(tmp, rank_file(dir_, rank_));
  } catch (const std::exception& e) {
    failure = e.what();
  }
  const std::vector<std::string> failures = all_gather_strings(world, failure);
  for (size_t r = 0; r < failures.size(); ++r)
    ANVIL_CHECK(failures[r].empty(), "rank ", r, " cannot write its heartbeat file in ", dir_, ": ", failures[r],
                " — run.out_dir must be a directory every rank can write (a shared file system), or set "
                "run.peer_timeout: 0 to run without the peer watchdog");
  thread_ = std::thread([this] { run(); });
}

PeerWatchdog::~PeerWatchdog() {
  mark_done();
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void PeerWatchdog::mark_done() {
  std::ofstream(rank_file(dir_, rank_) + ".done") << "done\n";
}

void PeerWatchdog::run() {
  std::vector<Peer> peers(size_);
  const auto start = Clock::now();
  for (int r = 0; r < size_; ++r) peers[r].last_change = start;
  const auto beat = std::chrono::milliseconds(std::max(100, std::min(1000, static_cast<int>(timeout_s_ * 100))));
  const std::string mine = rank_file(dir_, rank_);
  while (!stop_) {
    utimensat(AT_FDCWD, mine.c_str(), nullptr, 0);  // the heartbeat: mtime = now
    const auto now = Clock::now();
    for (int r = 0; r < size_ && !stop_; ++r) {
      if (r == rank_) continue;
      const std::string path = rank_file(dir_, r);
      if (fs::exists(path + ".done")) continue;
      Peer& p = peers[r];
      if (p.pid == 0 && !read_peer(path, p)) continue;
      struct stat st {};
      std::string why;
      if (stat(path.c_str(), &st) == 0 &&
          (st.st_mtim.tv_sec != p.mtime.tv_sec || st.st_mtim.tv_nsec != p.mtime.tv_nsec)) {
        p.mtime = st.st_mtim;
        p.last_change = now;
      }
      if (p.host == host_ && kill(static_cast<pid_t>(p.pid), 0) != 0 && errno == ESRCH) {
        why = "its process exited without finishing (killed or crashed)";
      } else if (std::chrono::duration<double>(now - p.last_change).count() > timeout_s_) {
        std::ostringstream s;
        s << "no heartbeat for " << timeout_s_ << " s";
        why = s.str();
      }
      if (why.empty()) continue;
      if (fs::exists(path + ".done")) continue;  // it finished between the checks
      std::ostringstream msg;
      msg << "lost rank " << r << " of " << size_ << " (pid " << p.pid << " on " << p.host << "): " << why
          << " — rank " << rank_ << " stops too; the newest complete checkpoint is intact, rerun the job to resume "
          << "from it";
      if (on_lost_) {
        on_lost_(r, msg.str());
        return;
      }
      std::fprintf(stderr, "error: %s\n", msg.str().c_str());
      std::fflush(stderr);
      std::fflush(stdout);
      // NCCL kernels waiting for the lost rank would never end: abort them so the GPU is
      // released with the process (bounded: an abort on a broken network may itself hang).
      abort_nccl_communicators(5.0);
      _exit(exit_code_);
    }
    std::this_thread::sleep_for(beat);
  }
}

}  // namespace anvil
