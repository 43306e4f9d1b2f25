// The NCCL bootstrap pieces every build has (device choice, the id over MPI or a shared
// file), and the factories' CPU-only stand-ins. The NCCL communicator itself is
// parallel/cuda/nccl_communicator.cpp.
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "core/cuda_device.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"
#include "parallel/rendezvous.h"

namespace anvil {

namespace fs = std::filesystem;

int node_local_rank(Communicator* host) {
  const LaunchInfo launch = launch_info();
  if (launch.launched) return launch.local_rank;
  auto* mpi = host ? dynamic_cast<MpiCommunicator*>(&host->backend()) : nullptr;
  if (!mpi || mpi->size() == 1) return 0;
  // An unknown launcher: the ranks sharing this node's memory are the ones sharing its GPUs.
  MPI_Comm node = MPI_COMM_NULL;
  ANVIL_CHECK(MPI_Comm_split_type(mpi->handle(), MPI_COMM_TYPE_SHARED, mpi->rank(), MPI_INFO_NULL, &node) ==
                  MPI_SUCCESS,
              "node_local_rank: MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) failed — launch with mpirun or srun so "
              "the local rank comes from the launcher");
  int local = 0;
  MPI_Comm_rank(node, &local);
  MPI_Comm_free(&node);
  return local;
}

int cuda_device_for_local_rank(int local_rank, int visible_devices) {
  ANVIL_CHECK(visible_devices > 0, "no CUDA device is visible to this rank (local rank ", local_rank, "): ",
              cuda_unavailable_reason(), " — check CUDA_VISIBLE_DEVICES and the job's GPU request (srun --gpus-per-"
              "task / --gres=gpu:N), or set run.device: cpu");
  ANVIL_CHECK(local_rank >= 0, "cuda_device_for_local_rank: local rank ", local_rank, " is negative");
  return local_rank % visible_devices;
}

int cuda_device_for_rank(Communicator* host) {
  const int local = node_local_rank(host);
  return cuda_device_for_local_rank(local, cuda_device_count());
}

std::vector<uint8_t> broadcast_bytes(Communicator& host, const std::vector<uint8_t>& bytes, size_t n, int root) {
  ANVIL_CHECK(host.rank() != root || bytes.size() == n, "broadcast_bytes: the root holds ", bytes.size(),
              " bytes, expected ", n);
  Tensor t = Tensor::zeros({static_cast<int64_t>(n)}, DType::U8);
  if (host.rank() == root && n > 0) std::memcpy(t.raw_data(), bytes.data(), n);
  host.broadcast(t, root);
  const auto* p = static_cast<const uint8_t*>(t.raw_data());
  return std::vector<uint8_t>(p, p + n);
}

std::string shared_id_path(const SharedFileId& where) {
  return (fs::path(where.dir) / ("nccl_id." + where.tag)).string();
}

SharedFileId default_shared_id(const std::string& tag) {
  SharedFileId where;
  const char* dir = std::getenv("ANVIL_NCCL_ID_DIR");
  where.dir = dir && *dir ? fs::absolute(dir).lexically_normal().string() : rendezvous_dir(launch_info());
  where.tag = tag;
  const char* t = std::getenv("ANVIL_NCCL_ID_TIMEOUT");
  if (t && std::atof(t) > 0) where.timeout_s = std::atof(t);
  return where;
}

std::vector<uint8_t> exchange_id_via_file(const SharedFileId& where, int rank, const std::vector<uint8_t>& root_bytes,
                                          size_t n) {
  ANVIL_CHECK(!where.dir.empty() && !where.tag.empty() && where.tag.find('/') == std::string::npos,
              "NCCL id exchange: needs a directory and a tag without '/' (got dir '", where.dir, "', tag '", where.tag,
              "')");
  const std::string path = shared_id_path(where);
  if (rank == 0) {
    ANVIL_CHECK(root_bytes.size() == n, "NCCL id exchange: rank 0 holds ", root_bytes.size(), " bytes, expected ", n);
    std::error_code ec;
    fs::create_directories(where.dir, ec);
    ANVIL_CHECK(!ec, "NCCL id exchange: cannot create ", where.dir, ": ", ec.message(),
                " — set ANVIL_NCCL_ID_DIR to a writable directory every node shares");
    // Written under a private name and renamed, so a reader never sees a partial id.
    const std::string tmp = path + ".tmp." + std::to_string(static_cast<long>(getpid()));
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out.write(reinterpret_cast<const char*>(root_bytes.data()), static_cast<std::streamsize>(n));
      out.flush();
      ANVIL_CHECK(out.good(), "NCCL id exchange: cannot write ", tmp,
                  " — set ANVIL_NCCL_ID_DIR to a writable directory every node shares");
    }
    fs::rename(tmp, path, ec);
    ANVIL_CHECK(!ec, "NCCL id exchange: cannot rename ", tmp, " to ", path, ": ", ec.message());
    return root_bytes;
  }
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration<double>(where.timeout_s);
  auto pause = std::chrono::milliseconds(10);
  for (;;) {
    std::error_code ec;
    if (fs::exists(path, ec)) {
      const auto size = fs::file_size(path, ec);
      ANVIL_CHECK(!ec && size == n, "NCCL id exchange: ", path, " holds ", ec ? 0 : size, " bytes, expected ", n,
                  " — a file left by another launch or another program; remove it, or give this launch its own "
                  "ANVIL_NCCL_ID_DIR");
      std::ifstream in(path, std::ios::binary);
      std::vector<uint8_t> bytes(n);
      in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(n));
      ANVIL_CHECK(in.gcount() == static_cast<std::streamsize>(n), "NCCL id exchange: reading ", path, " on rank ",
                  rank, " returned ", in.gcount(), " of ", n, " bytes");
      return bytes;
    }
    ANVIL_CHECK(Clock::now() < deadline, "NCCL id exchange: rank ", rank, " waited ", where.timeout_s, " s for ", path,
                ", which rank 0 writes — check that rank 0 started and reached the NCCL set-up, and that ", where.dir,
                " is a directory every node shares (set ANVIL_NCCL_ID_DIR to one; raise ANVIL_NCCL_ID_TIMEOUT if "
                "rank 0 starts late)");
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(200));
  }
}

void remove_shared_id(const SharedFileId& where) {
  std::error_code ec;
  fs::remove(shared_id_path(where), ec);
}

std::shared_ptr<Communicator> grid_collective_world(std::shared_ptr<Communicator> world, const std::string& run_device,
                                                    int device) {
  if (run_device == "cpu") return nullptr;
  ANVIL_CHECK(run_device == "cuda", "grid_collective_world: run.device '", run_device, "' — expected cpu or cuda");
  ANVIL_CHECK(world != nullptr, "grid_collective_world: needs the job's world communicator (MPI) to bootstrap NCCL");
  return make_nccl_communicator(std::move(world), device);
}

#ifndef ANVIL_WITH_CUDA
namespace {
constexpr const char* kNoNccl =
    "this build has no CUDA backend (nvcc was not found at configure time), so there is no NCCL communicator — set "
    "run.device: cpu, or install the CUDA toolkit and NCCL and reconfigure";
}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator>, int) {
  ANVIL_FAIL("make_nccl_communicator: ", kNoNccl);
}

std::unique_ptr<Communicator> make_nccl_communicator(int, int, const SharedFileId&, int) {
  ANVIL_FAIL("make_nccl_communicator: ", kNoNccl);
}

bool nccl_built() { return false; }
int abort_nccl_communicators(double) { return 0; }
#endif

}  // namespace anvil
