#include "parallel/launch.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <sstream>

namespace anvil {

namespace {

// A whole non-negative number, or -1.
int parse_count(const char* s) {
  if (!s || !*s) return -1;
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (*end != '\0' || v < 0 || v > (1 << 30)) return -1;
  return static_cast<int>(v);
}

std::string this_host() {
  char name[256] = {0};
  if (gethostname(name, sizeof name - 1) != 0) return "unknown";
  return name;
}

}  // namespace

int tasks_on_node(const std::string& list, int node) {
  // "2(x3),1" = 2, 2, 2, 1
  std::stringstream in(list);
  std::string item;
  int index = 0;
  while (std::getline(in, item, ',')) {
    const size_t paren = item.find("(x");
    const int count = parse_count(item.substr(0, paren).c_str());
    int repeat = 1;
    if (paren != std::string::npos) {
      if (item.back() != ')') return -1;
      repeat = parse_count(item.substr(paren + 2, item.size() - paren - 3).c_str());
    }
    if (count < 0 || repeat < 1) return -1;
    if (node < index + repeat) return count;
    index += repeat;
  }
  return -1;
}

const char* launcher_name(Launcher l) {
  switch (l) {
    case Launcher::None: return "none";
    case Launcher::Mpirun: return "mpirun";
    case Launcher::SrunPmix: return "srun+pmix";
    case Launcher::Pmi: return "pmi (file rendezvous)";
    case Launcher::SrunNoPmi: return "srun (file rendezvous)";
  }
  return "?";
}

LaunchInfo resolve_launch(const std::function<const char*(const char*)>& env, const std::string& host) {
  LaunchInfo info;
  info.host = host;
  auto num = [&](const char* var) { return parse_count(env(var)); };
  auto fill_slurm_layout = [&](LaunchInfo& i) {
    if (num("SLURM_LOCALID") >= 0) i.local_rank = num("SLURM_LOCALID");
    if (num("SLURM_NODEID") >= 0) i.node = num("SLURM_NODEID");
    const int nodes = num("SLURM_STEP_NUM_NODES") > 0 ? num("SLURM_STEP_NUM_NODES") : num("SLURM_NNODES");
    if (nodes > 0) i.nodes = nodes;
    const char* per_node = env("SLURM_STEP_TASKS_PER_NODE") ? env("SLURM_STEP_TASKS_PER_NODE") : env("SLURM_TASKS_PER_NODE");
    const int local = per_node ? tasks_on_node(per_node, i.node) : -1;
    i.local_size = local > 0 ? local : 1;
  };
  const bool slurm_step = env("SLURM_STEP_ID") != nullptr && num("SLURM_PROCID") >= 0;
  const int slurm_size = num("SLURM_STEP_NUM_TASKS") > 0 ? num("SLURM_STEP_NUM_TASKS") : num("SLURM_NTASKS");

  if (num("OMPI_COMM_WORLD_RANK") >= 0 && num("OMPI_COMM_WORLD_SIZE") > 0) {
    info.launcher = Launcher::Mpirun;
    info.rank = num("OMPI_COMM_WORLD_RANK");
    info.size = num("OMPI_COMM_WORLD_SIZE");
    info.local_rank = std::max(0, num("OMPI_COMM_WORLD_LOCAL_RANK"));
    info.local_size = std::max(1, num("OMPI_COMM_WORLD_LOCAL_SIZE"));
    // Open MPI names no node index; under Slurm (mpirun inside sbatch) its daemons carry none either.
    // Open MPI names no node index: assume the usual by-slot mapping (consecutive ranks share a node).
    info.nodes = (info.size + info.local_size - 1) / info.local_size;
    info.node = info.rank / info.local_size;
  } else if (num("PMIX_RANK") >= 0 && slurm_step && slurm_size > 0) {
    info.launcher = Launcher::SrunPmix;
    info.rank = num("PMIX_RANK");
    info.size = slurm_size;
    fill_slurm_layout(info);
  } else if (num("PMI_RANK") >= 0 && num("PMI_SIZE") > 0) {
    info.launcher = Launcher::Pmi;
    info.rank = num("PMI_RANK");
    info.size = num("PMI_SIZE");
    if (slurm_step) {
      fill_slurm_layout(info);
    } else {
      info.local_rank = std::max(0, num("MPI_LOCALRANKID"));
      info.local_size = std::max(1, num("MPI_LOCALNRANKS"));
    }
  } else if (slurm_step && slurm_size > 0) {
    info.launcher = Launcher::SrunNoPmi;
    info.rank = num("SLURM_PROCID");
    info.size = slurm_size;
    fill_slurm_layout(info);
  } else {
    return info;
  }
  info.launched = true;
  // A lone process needs no rendezvous whatever launched it.
  if (info.size == 1 && info.needs_rendezvous()) info.launcher = Launcher::None;
  return info;
}

LaunchInfo launch_info() {
  static const LaunchInfo info = resolve_launch([](const char* v) { return std::getenv(v); }, this_host());
  return info;
}

std::string describe_launch(const LaunchInfo& i) {
  std::ostringstream s;
  s << "rank " << i.rank << "/" << i.size << " | local " << i.local_rank << "/" << i.local_size << " | node "
    << i.node << "/" << i.nodes << " | host " << i.host << " | launcher " << launcher_name(i.launcher);
  return s.str();
}

}  // namespace anvil
