// Helpers for the ops tests: background jobs (mpirun, sbatch) started in their own process
// group and always cleaned up, rank processes found by their environment, metrics.jsonl
// records read back as numbers.
#pragma once
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "trainer/checkpoint.h"

namespace anvil::ops_test {

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline int occurrences(const std::string& text, const std::string& part) {
  int n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

// The environment every launch here runs with: root allowed, one thread per rank, loopback only.
inline const char* kMpiEnv =
    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMPI_MCA_btl=self,vader "
    "OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl_tcp_if_include=lo";

// Kills (SIGKILL) every process whose command line or environment mentions `marker` (a
// directory unique to one test), so nothing a test started outlives it.
inline void kill_marked(const std::string& marker) {
  DIR* proc = opendir("/proc");
  if (!proc) return;
  while (dirent* e = readdir(proc)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0 || pid == getpid()) continue;
    const std::string base = std::string("/proc/") + e->d_name;
    const std::string text = read_text(base + "/cmdline") + read_text(base + "/environ");
    if (text.find(marker) != std::string::npos) kill(pid, SIGKILL);
  }
  closedir(proc);
}

// Pids of processes whose environment has `var`=`value` and whose command line mentions `marker`.
inline std::vector<pid_t> find_processes(const std::string& marker, const std::string& var, const std::string& value) {
  std::vector<pid_t> found;
  DIR* proc = opendir("/proc");
  if (!proc) return found;
  while (dirent* e = readdir(proc)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    const std::string base = std::string("/proc/") + e->d_name;
    std::string cmd = read_text(base + "/cmdline");
    if (cmd.find(marker) == std::string::npos || cmd.find("anvil") == std::string::npos) continue;
    if (cmd.find("train") == std::string::npos) continue;
    std::string env = read_text(base + "/environ");
    const std::string want = var + "=" + value;
    size_t at = 0;
    while (at < env.size()) {
      const size_t end = env.find('\0', at);
      if (env.compare(at, (end == std::string::npos ? env.size() : end) - at, want) == 0) {
        // the exec'd anvil, not a wrapper shell
        if (read_text(base + "/comm").rfind("anvil", 0) == 0) found.push_back(pid);
        break;
      }
      if (end == std::string::npos) break;
      at = end + 1;
    }
  }
  closedir(proc);
  return found;
}

// A shell command in the background, its output in `log`; killed with its group (and anything
// mentioning `marker`) when it goes out of scope.
class Background {
 public:
  Background(const std::string& command, const std::string& log, const std::string& marker)
      : log_(log), marker_(marker) {
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    setpgid(pid_, pid_);
  }
  ~Background() {
    if (pid_ > 0 && !exited_) {
      kill(-pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (!marker_.empty()) kill_marked(marker_);
  }
  // The exit code, or -1 if it is still running after `seconds` (then it is killed).
  int wait(double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill(-pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    exited_ = true;
    return -1;
  }
  std::string output() const { return read_text(log_); }

 private:
  std::string log_, marker_;
  pid_t pid_ = -1;
  bool exited_ = false;
};

// Polls `ready` every 100 ms for up to `seconds`.
// The step of the newest complete checkpoint under root (0: none yet). A run that keeps the
// newest few prunes older ones while we look, so wait on this rather than on one directory.
inline int64_t newest_checkpoint_step(const std::string& root) {
  try {
    const std::string dir = anvil::latest_checkpoint(root);
    return dir.empty() ? 0 : anvil::read_checkpoint_meta(dir).step;
  } catch (const anvil::Error&) {
    return 0;  // pruned between the listing and the read
  }
}

inline bool wait_until(double seconds, const std::function<bool()>& ready) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return ready();
}

struct StepLine {
  int64_t step;
  double loss, grad_norm, lr;
};

// The training-step records of a metrics.jsonl (validation lines left out).
inline std::vector<StepLine> step_lines(const std::string& path) {
  std::vector<StepLine> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object() || !j.contains("loss")) continue;
    out.push_back({j["step"].get<int64_t>(), j["loss"].get<double>(), j["grad_norm"].get<double>(),
                   j["lr"].get<double>()});
  }
  return out;
}

inline uint64_t bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

}  // namespace anvil::ops_test
