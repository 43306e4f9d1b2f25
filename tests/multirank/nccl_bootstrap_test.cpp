// The NCCL bootstrap pieces that need no GPU: the unique id over MPI (broadcast_bytes) and
// through a shared file (fake 128-byte ids), the device choice arithmetic, the factories'
// errors where NCCL cannot start (CPU-only build, or a device that does not exist), and the
// grid splitting its axes from a separate collectives communicator. Runs at 1-4 ranks.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "core/cuda_device.h"
#include "parallel/grid.h"
#include "parallel/nccl_communicator.h"
#include "parallel/rendezvous.h"
#include "parallel/timed_communicator.h"
#include "tests/support/mpi_world.h"

using namespace anvil;
using anvil::testing::world;
namespace fs = std::filesystem;

namespace {

// A stand-in for ncclGetUniqueId's 128 bytes, different for every seed.
std::vector<uint8_t> fake_id(uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<uint8_t> id(kNcclIdBytes);
  for (auto& b : id) b = static_cast<uint8_t>(gen());
  return id;
}

uint64_t as_u64(const std::vector<uint8_t>& b) {
  uint64_t v = 0;
  std::memcpy(&v, b.data(), sizeof v);
  return v;
}

// A fresh directory and seed for one test, chosen by rank 0 and shared over MPI (the ranks of
// an mpirun test share /tmp).
struct Scratch {
  std::string dir;
  uint64_t seed = 0;
};

Scratch agree_scratch(const std::string& name) {
  auto w = world();
  constexpr size_t kPath = 512;
  std::vector<uint8_t> msg(kPath + 8, 0);
  if (w->rank() == 0) {
    const uint64_t seed = std::random_device{}() ^ (static_cast<uint64_t>(getpid()) << 32) ^
                          static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    const std::string dir =
        (fs::temp_directory_path() / ("anvil_nccl_id_test." + name + "." + std::to_string(seed))).string();
    EXPECT_LT(dir.size(), kPath);
    fs::remove_all(dir);
    std::memcpy(msg.data(), &seed, 8);
    std::memcpy(msg.data() + 8, dir.data(), dir.size());
  }
  msg = broadcast_bytes(*w, msg, msg.size(), 0);
  Scratch s;
  std::memcpy(&s.seed, msg.data(), 8);
  s.dir = std::string(reinterpret_cast<const char*>(msg.data() + 8));
  return s;
}

void cleanup(const Scratch& s) {
  world()->barrier();
  if (world()->rank() == 0) fs::remove_all(s.dir);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(NcclBootstrap, BroadcastBytesFromAnyRoot) {
  auto w = world();
  for (int root : {0, w->size() - 1}) {
    const std::vector<uint8_t> id = fake_id(1234 + root);
    const std::vector<uint8_t> got = broadcast_bytes(*w, w->rank() == root ? id : std::vector<uint8_t>{}, id.size(), root);
    EXPECT_EQ(got, id) << "root " << root;
  }
  // The root must hold exactly n bytes; it throws before the broadcast, so only rank 0 calls.
  if (w->rank() == 0)
    EXPECT_NE(error_of([&] { broadcast_bytes(*w, std::vector<uint8_t>(5), kNcclIdBytes, 0); }).find("expected 128"),
              std::string::npos);
}

TEST(NcclBootstrap, SharedFileDeliversRankZerosIdToEveryRank) {
  auto w = world();
  const Scratch s = agree_scratch("deliver");
  // Two communicators' ids under two tags, so neither is read as the other.
  for (const std::string tag : {"world", "tp.3"}) {
    const std::vector<uint8_t> id = fake_id(s.seed + tag.size());
    SharedFileId where{s.dir, tag, 60};
    if (w->rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(150));  // the others poll first
    const std::vector<uint8_t> got =
        exchange_id_via_file(where, w->rank(), w->rank() == 0 ? id : std::vector<uint8_t>{}, kNcclIdBytes);
    EXPECT_EQ(got, id) << "tag " << tag;
    // Every rank read the same bytes (not merely the right length).
    Tensor mine = Tensor::full({1}, static_cast<double>(as_u64(got) % 1000003), DType::I64);
    Tensor lo = mine.clone(), hi = mine.clone();
    w->all_reduce(lo, ReduceOp::Min);
    w->all_reduce(hi, ReduceOp::Max);
    EXPECT_EQ(lo.item(), hi.item());
    w->barrier();  // every rank has read it
    if (w->rank() == 0) {
      EXPECT_TRUE(fs::exists(shared_id_path(where)));
      remove_shared_id(where);
      EXPECT_FALSE(fs::exists(shared_id_path(where)));
    }
    w->barrier();
  }
  // The write was atomic: no temporary file stays behind.
  if (w->rank() == 0)
    for (const auto& entry : fs::directory_iterator(s.dir)) ADD_FAILURE() << "left behind: " << entry.path();
  cleanup(s);
}

TEST(NcclBootstrap, SharedFileTimeoutNamesTheFileAndTheFix) {
  const Scratch s = agree_scratch("timeout");
  // Every rank acts as a non-zero rank waiting for an id nobody writes.
  const SharedFileId where{s.dir + "/rank" + std::to_string(world()->rank()), "never", 0.2};
  const auto start = std::chrono::steady_clock::now();
  const std::string err = error_of([&] { exchange_id_via_file(where, 1, {}, kNcclIdBytes); });
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(err.find(shared_id_path(where)), std::string::npos) << err;
  EXPECT_NE(err.find("rank 0"), std::string::npos) << err;
  EXPECT_NE(err.find("ANVIL_NCCL_ID_DIR"), std::string::npos) << err;
  EXPECT_NE(err.find("ANVIL_NCCL_ID_TIMEOUT"), std::string::npos) << err;
  EXPECT_GE(waited, 0.2);
  EXPECT_LT(waited, 10.0);
  cleanup(s);
}

TEST(NcclBootstrap, SharedFileRejectsWrongSizesAndBadTags) {
  const Scratch s = agree_scratch("sizes");
  const std::string dir = s.dir + "/rank" + std::to_string(world()->rank());
  fs::create_directories(dir);
  // A file of the wrong size (left by something else) is an error naming it, not a bad id.
  const SharedFileId stale{dir, "stale", 5};
  std::ofstream(shared_id_path(stale), std::ios::binary) << "12345";
  std::string err = error_of([&] { exchange_id_via_file(stale, 2, {}, kNcclIdBytes); });
  EXPECT_NE(err.find(shared_id_path(stale)), std::string::npos) << err;
  EXPECT_NE(err.find("holds 5 bytes, expected 128"), std::string::npos) << err;
  // Rank 0 must publish exactly n bytes.
  err = error_of([&] { exchange_id_via_file({dir, "short", 5}, 0, std::vector<uint8_t>(7), kNcclIdBytes); });
  EXPECT_NE(err.find("rank 0 holds 7 bytes, expected 128"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(shared_id_path({dir, "short", 5})));
  // A tag is one file name.
  err = error_of([&] { exchange_id_via_file({dir, "a/b", 5}, 0, fake_id(1), kNcclIdBytes); });
  EXPECT_NE(err.find("tag without '/'"), std::string::npos) << err;
  cleanup(s);
}

TEST(NcclBootstrap, DefaultSharedIdFollowsTheEnvironment) {
  setenv("ANVIL_NCCL_ID_DIR", "/tmp/anvil-ids/./x", 1);
  setenv("ANVIL_NCCL_ID_TIMEOUT", "7.5", 1);
  SharedFileId where = default_shared_id("pp.1");
  EXPECT_EQ(where.dir, "/tmp/anvil-ids/x");
  EXPECT_EQ(where.tag, "pp.1");
  EXPECT_EQ(where.timeout_s, 7.5);
  EXPECT_EQ(shared_id_path(where), "/tmp/anvil-ids/x/nccl_id.pp.1");
  unsetenv("ANVIL_NCCL_ID_DIR");
  unsetenv("ANVIL_NCCL_ID_TIMEOUT");
  where = default_shared_id();
  EXPECT_EQ(where.tag, "world");
  EXPECT_EQ(where.timeout_s, 120);
  EXPECT_EQ(where.dir, rendezvous_dir(launch_info()));  // the job step's rendezvous directory
}

TEST(NcclBootstrap, DeviceIsTheLocalRankModuloTheVisibleDevices) {
  EXPECT_EQ(cuda_device_for_local_rank(0, 8), 0);
  EXPECT_EQ(cuda_device_for_local_rank(3, 8), 3);
  EXPECT_EQ(cuda_device_for_local_rank(5, 4), 1);
  EXPECT_EQ(cuda_device_for_local_rank(2, 1), 0);  // each task sees only its own GPU
  const std::string err = error_of([] { cuda_device_for_local_rank(1, 0); });
  EXPECT_NE(err.find("no CUDA device is visible"), std::string::npos) << err;
  EXPECT_NE(err.find("run.device: cpu"), std::string::npos) << err;
  // Under mpirun the launcher names the local rank (all ranks of this test share one node).
  const LaunchInfo launch = launch_info();
  if (launch.launched) {
    EXPECT_EQ(node_local_rank(world().get()), launch.local_rank);
    EXPECT_EQ(launch.local_rank, world()->rank());
  } else {
    EXPECT_EQ(node_local_rank(world().get()), 0);
  }
}

TEST(NcclBootstrap, FactoriesSayWhyNcclCannotStart) {
  auto w = world();
  EXPECT_EQ(abort_nccl_communicators(1.0), 0);  // none alive
#ifndef ANVIL_WITH_CUDA
  EXPECT_FALSE(nccl_built());
  for (const std::string& err :
       {error_of([&] { make_nccl_communicator(w, -1); }),
        error_of([&] { make_nccl_communicator(w->rank(), w->size(), SharedFileId{"/tmp", "x", 1}, 0); }),
        error_of([&] { grid_collective_world(w, "cuda"); })}) {
    EXPECT_NE(err.find("no CUDA backend"), std::string::npos) << err;
    EXPECT_NE(err.find("run.device: cpu"), std::string::npos) << err;
  }
#else
  EXPECT_TRUE(nccl_built());
  // A device past the visible ones fails on every rank alike, before any NCCL call.
  const int visible = cuda_device_count();
  const std::string err = error_of([&] { make_nccl_communicator(w, visible + 3); });
  if (visible == 0) {
    EXPECT_NE(err.find("no CUDA device is visible"), std::string::npos) << err;
    EXPECT_NE(err.find("run.device: cpu"), std::string::npos) << err;
  } else {
    EXPECT_NE(err.find("cuda:" + std::to_string(visible + 3) + " does not exist"), std::string::npos) << err;
  }
#endif
  // cpu runs keep the MPI grid; anything else is a typo.
  EXPECT_EQ(grid_collective_world(w, "cpu"), nullptr);
  EXPECT_NE(error_of([&] { grid_collective_world(w, "tpu"); }).find("expected cpu or cuda"), std::string::npos);
}

TEST(NcclBootstrap, GridSplitsItsAxesFromTheCollectivesCommunicator) {
  auto w = world();
  const int P = w->size();
  // Any communicator over the world's ranks in the world's order may carry the axes.
  // (Timed, because a timed communicator's splits share its clock: that shows where they came from.)
  auto collectives = std::make_shared<TimedCommunicator>(std::shared_ptr<Communicator>(w->split(0, w->rank())));
  ProcessGrid grid(w, GridDims{P, 1, 1, 1}, collectives);
  EXPECT_EQ(&grid.collectives(), collectives.get());
  EXPECT_EQ(&grid.world(), w.get());
  for (Axis axis : {Axis::DP, Axis::TP, Axis::PP, Axis::SP})
    EXPECT_EQ(comm_clock(&grid.comm(axis)), &collectives->clock()) << axis_name(axis);
  EXPECT_EQ(comm_clock(&grid.data_sequence_comm()), &collectives->clock());
  Tensor t = Tensor::full({3}, 1.0 + w->rank());
  grid.comm(Axis::DP).all_reduce(t, ReduceOp::Sum);
  EXPECT_EQ(t.item_at({2}), P * (P + 1) / 2.0);
  // Without one, the axes are the world's own splits (the world here is not timed).
  ProcessGrid plain(w, GridDims{P, 1, 1, 1});
  EXPECT_EQ(&plain.collectives(), w.get());
  EXPECT_EQ(comm_clock(&plain.comm(Axis::DP)), nullptr);
  // Placed differently (reversed): every rank fails alike instead of hanging in the splits.
  std::shared_ptr<Communicator> reversed(w->split(0, P - 1 - w->rank()));
  const std::string err = error_of([&] {
    ProcessGrid bad(w, GridDims{P, 1, 1, 1}, reversed);
  });
  if (P >= 2)
    EXPECT_NE(err.find("differently from the world"), std::string::npos) << err;
  else
    EXPECT_EQ(err, "");
}
