#include "parallel/rendezvous.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "core/error.h"

extern char** environ;

namespace anvil {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return "";
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Readers never see a half-written file: write aside, then rename.
void publish(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp" + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    ANVIL_CHECK(out.good(), "rendezvous: cannot write ", tmp.string(), " — the directory must be writable by every task");
  }
  fs::rename(tmp, p);
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// Kills this process if the rendezvous is not done by the deadline: MPI_Comm_accept and
// MPI_Comm_connect block without a timeout of their own.
class Deadline {
 public:
  Deadline(double seconds, std::string context) : context_(std::move(context)) {
    thread_ = std::thread([this, seconds] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return done_; })) {
        std::fprintf(stderr, "error: %s after %.0f s (%s) — check that every task of the step started and that the "
                     "directory is on a file system all nodes share; ANVIL_RENDEZVOUS_TIMEOUT sets the limit\n",
                     context_.c_str(), seconds, stage_.load());
        std::fflush(stderr);
        _exit(1);
      }
    });
  }
  ~Deadline() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void stage(const char* what) { stage_ = what; }

 private:
  std::string context_;
  std::atomic<const char*> stage_{"starting"};
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// Polls until `ready` returns true (the deadline thread ends a wait that never finishes).
template <class Ready>
void wait_for(Ready ready) {
  while (!ready()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

// The server dies with rank 0 however rank 0 ends (the peer watchdog's _exit, kill -9):
// the child asks the kernel for SIGTERM when its parent goes (PR_SET_PDEATHSIG), which
// posix_spawn cannot do, so this forks and execs by hand. A pipe closed by exec reports
// whether the exec worked.
pid_t start_server(const fs::path& dir) {
  const std::string uri_tmp = (dir / "server.uri.tmp").string(), log = (dir / "ompi-server.log").string();
  std::vector<std::string> args = {"ompi-server", "--no-daemonize", "-r", uri_tmp};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int status_pipe[2];
  ANVIL_CHECK(pipe2(status_pipe, O_CLOEXEC) == 0, "rendezvous: pipe failed (", std::strerror(errno), ")");
  const pid_t parent = getpid();
  const pid_t pid = fork();
  ANVIL_CHECK(pid >= 0, "rendezvous: cannot fork for ompi-server (", std::strerror(errno), ")");
  if (pid == 0) {  // child: only async-signal-safe calls until exec
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);  // the parent is already gone
    const int out = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644), in = open("/dev/null", O_RDONLY);
    if (out >= 0) dup2(out, 1), dup2(out, 2);
    if (in >= 0) dup2(in, 0);
    execvp("ompi-server", argv.data());
    const int err = errno;
    (void)!write(status_pipe[1], &err, sizeof err);
    _exit(127);
  }
  close(status_pipe[1]);
  int err = 0;
  const ssize_t got = read(status_pipe[0], &err, sizeof err);  // 0 bytes: exec succeeded (the pipe closed)
  close(status_pipe[0]);
  if (got == static_cast<ssize_t>(sizeof err)) {
    waitpid(pid, nullptr, 0);
    ANVIL_FAIL("rendezvous: cannot start ompi-server (", std::strerror(err),
               ") — it comes with Open MPI (Debian: openmpi-bin); put it on PATH");
  }
  return pid;
}

// Runs MPI_Init as a singleton: Open MPI refuses a direct launch it has no PMI for, so the
// launcher's variables are hidden while it starts and put back afterwards.
void init_singleton() {
  std::vector<std::pair<std::string, std::string>> hidden;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const size_t eq = kv.find('=');
    const std::string name = kv.substr(0, eq);
    if (name.rfind("SLURM_", 0) == 0 || name.rfind("PMI_", 0) == 0 || name.rfind("PMIX_", 0) == 0)
      hidden.emplace_back(name, eq == std::string::npos ? "" : kv.substr(eq + 1));
  }
  for (const auto& [name, value] : hidden) unsetenv(name.c_str());
  int provided = 0;
  const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  for (const auto& [name, value] : hidden) setenv(name.c_str(), value.c_str(), 1);
  ANVIL_CHECK(rc == MPI_SUCCESS, "rendezvous: MPI_Init failed as a singleton");
}

}  // namespace

std::string rendezvous_dir(const LaunchInfo& info) {
  const char* base = std::getenv("ANVIL_RENDEZVOUS_DIR");
  auto var = [](const char* name, const char* fallback) {
    const char* v = std::getenv(name);
    return std::string(v && *v ? v : fallback);
  };
  const std::string leaf = "job" + var("SLURM_JOB_ID", "0") + ".step" + var("SLURM_STEP_ID", "0") + ".restart" +
                           var("SLURM_RESTART_COUNT", "0");
  return (fs::absolute(base && *base ? base : ".anvil-rendezvous") / leaf).lexically_normal().string();
}

Rendezvous rendezvous_join(const LaunchInfo& info, const std::string& dir_name, double timeout_s) {
  Rendezvous r;
  r.dir = dir_name;
  const fs::path dir(dir_name);
  const int rank = info.rank, size = info.size;
  Deadline deadline(timeout_s, detail::concat("rendezvous of ", size, " ranks in ", dir_name, " did not complete on rank ",
                                              rank));
  // 1. The name server, and MPI pointed at it.
  if (rank == 0) {
    fs::create_directories(dir);
    for (const char* stale : {"server.uri", "port", "turn"}) fs::remove(dir / stale);
    deadline.stage("starting ompi-server");
    r.server_pid = start_server(dir);
    // ompi-server writes its address and a newline; a newline means the line is whole.
    wait_for([&] {
      int status = 0;
      ANVIL_CHECK(waitpid(r.server_pid, &status, WNOHANG) == 0, "rendezvous: ompi-server exited at start: ",
                  read_text(dir / "ompi-server.log"), " (log: ", (dir / "ompi-server.log").string(), ")");
      const std::string uri = read_text(dir / "server.uri.tmp");
      return !uri.empty() && uri.back() == '\n';
    });
    fs::rename(dir / "server.uri.tmp", dir / "server.uri");
  }
  deadline.stage("waiting for rank 0's server.uri");
  wait_for([&] { return fs::exists(dir / "server.uri"); });
  setenv("OMPI_MCA_pmix_server_uri", ("file:" + (dir / "server.uri").string()).c_str(), 1);
  // Shared memory (vader) cannot reach a process of another job, and every rank here is its own
  // job: a BTL list without tcp would leave the ranks unable to talk.
  if (const char* btl = std::getenv("OMPI_MCA_btl"); btl && std::string(btl).find("tcp") == std::string::npos &&
                                                      btl[0] != '^')
    setenv("OMPI_MCA_btl", (std::string(btl) + ",tcp").c_str(), 1);
  deadline.stage("MPI_Init");
  init_singleton();

  // 2-3. The port, and the join in rank order.
  char port[MPI_MAX_PORT_NAME] = {0};
  MPI_Comm comm = MPI_COMM_NULL;
  if (rank == 0) {
    ANVIL_CHECK(MPI_Open_port(MPI_INFO_NULL, port) == MPI_SUCCESS, "rendezvous: MPI_Open_port failed");
    publish(dir / "port", port);
    publish(dir / "turn", "1");
    MPI_Comm_dup(MPI_COMM_SELF, &comm);
  } else {
    deadline.stage("waiting for this rank's turn to join");
    wait_for([&] { return trim(read_text(dir / "turn")) == std::to_string(rank); });
    const std::string p = trim(read_text(dir / "port"));
    ANVIL_CHECK(!p.empty() && p.size() < sizeof port, "rendezvous: ", (dir / "port").string(), " is empty or too long");
    std::memcpy(port, p.data(), p.size());
    deadline.stage("MPI_Comm_connect");
    MPI_Comm inter;
    ANVIL_CHECK(MPI_Comm_connect(port, MPI_INFO_NULL, 0, MPI_COMM_SELF, &inter) == MPI_SUCCESS,
                "rendezvous: MPI_Comm_connect to ", port, " failed");
    MPI_Intercomm_merge(inter, 1, &comm);  // the newcomer goes last
  }
  int joined = 0, me = 0;
  MPI_Comm_size(comm, &joined);
  deadline.stage("accepting the next rank");
  while (joined < size) {
    MPI_Comm inter, merged;
    ANVIL_CHECK(MPI_Comm_accept(port, MPI_INFO_NULL, 0, comm, &inter) == MPI_SUCCESS, "rendezvous: MPI_Comm_accept failed");
    MPI_Intercomm_merge(inter, 0, &merged);
    comm = merged;
    MPI_Comm_size(comm, &joined);
    MPI_Comm_rank(comm, &me);
    if (me == 0 && joined < size) publish(dir / "turn", std::to_string(joined));
  }
  if (rank == 0) MPI_Close_port(port);
  MPI_Comm_rank(comm, &me);
  ANVIL_CHECK(me == rank, "rendezvous: joined as rank ", me, " but the launcher says ", rank, " — please report this");
  r.world = comm;
  return r;
}

void rendezvous_cleanup(const Rendezvous& r) {
  if (r.server_pid <= 0) return;
  kill(r.server_pid, SIGTERM);
  int status = 0;
  waitpid(r.server_pid, &status, 0);
  std::error_code ec;
  fs::remove_all(r.dir, ec);
}

}  // namespace anvil
