// anvil's NCCL communicator (parallel/nccl_communicator.h) over every visible GPU, one
// thread per rank in one process (needs 2 or more GPUs: tests/support/gpu_main.cpp skips with
// the reason otherwise). The ranks find each other through the shared-file id exchange, so no
// MPI launcher is needed. Collectives and point-to-point on CUDA tensors, checked exactly
// (small integers are exact in f32 and bf16). A multi-process run of the same communicator
// under mpirun is tests/multirank (on CPU machines it checks the bootstrap only).
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "core/cuda/runtime.h"
#include "core/cuda_device.h"
#include "parallel/nccl_communicator.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr int64_t kCount = (1 << 20) + 3;  // not a multiple of any chunking, > one NCCL buffer

// Element i of rank r's contribution: (r + 1) * (i % 13 - 6).
float contribution(int r, int64_t i) { return static_cast<float>((r + 1) * (i % 13 - 6)); }

Tensor host_ramp(int r, int64_t n, int64_t first = 0) {
  Tensor t = Tensor::empty({n});
  for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = contribution(r, first + i);
  return t;
}

// Elements of got (any dtype, any device) that differ from want(i).
int64_t mismatches(const Tensor& got, const std::function<float(int64_t)>& want) {
  const std::vector<float> g = got.to(Device::cpu()).to(DType::F32).to_vector();
  int64_t wrong = 0;
  for (size_t i = 0; i < g.size(); ++i) wrong += g[i] != want(static_cast<int64_t>(i));
  return wrong;
}

// Runs body(comm) on every rank, each in its own thread on its own GPU, and fails (instead of
// hanging) when a rank throws or the whole run exceeds the timeout: the others may then be
// stuck in a collective, so every NCCL communicator is aborted.
void on_every_rank(const std::string& name, const std::function<void(Communicator&)>& body) {
  const int n = cuda_device_count();
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("anvil_nccl_gpu_test." + std::to_string(::getpid()) + "." + name)).string();
  std::filesystem::create_directories(dir);
  std::vector<std::future<std::string>> ranks;
  for (int r = 0; r < n; ++r) {
    ranks.push_back(std::async(std::launch::async, [&, r]() -> std::string {
      try {
        cuda::DeviceGuard guard(r);
        std::unique_ptr<Communicator> comm = make_nccl_communicator(r, n, SharedFileId{dir, name, 60}, r);
        body(*comm);
        cuda::synchronize(r);
        return "";
      } catch (const std::exception& e) {
        return e.what();
      }
    }));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  for (int r = 0; r < n; ++r) {
    if (ranks[r].wait_until(deadline) != std::future_status::ready) {
      ADD_FAILURE() << name << ": rank " << r << " did not finish in 120 s; aborting NCCL";
      abort_nccl_communicators(10);
    }
  }
  for (int r = 0; r < n; ++r) EXPECT_EQ(ranks[r].get(), "") << name << ": rank " << r << " threw";
  std::filesystem::remove_all(dir);
}

TEST(NcclGpu, AllReduceF32AndBf16) {
  on_every_rank("all_reduce", [](Communicator& comm) {
    const int r = comm.rank(), n = comm.size();
    const float ranks_sum = static_cast<float>(n * (n + 1) / 2);
    for (const DType dt : {DType::F32, DType::BF16}) {
      Tensor t = host_ramp(r, kCount).to(dt).to(Device::cuda(r));
      comm.all_reduce(t);
      EXPECT_EQ(mismatches(t, [&](int64_t i) { return ranks_sum * static_cast<float>(i % 13 - 6); }), 0)
          << "rank " << r << " " << dtype_name(dt);
    }
    // Async: the handle orders the caller's stream after the collective.
    Tensor t = host_ramp(r, kCount).to(Device::cuda(r));
    auto h = comm.all_reduce_async(t, ReduceOp::Max);
    h->wait();
    EXPECT_EQ(mismatches(t, [&](int64_t i) { return std::max(contribution(n - 1, i), contribution(0, i)); }), 0)
        << "rank " << r << " all_reduce_async max";
  });
}

TEST(NcclGpu, AllGatherReduceScatterBroadcast) {
  on_every_rank("gather_scatter", [](Communicator& comm) {
    const int r = comm.rank(), n = comm.size();
    const Device dev = Device::cuda(r);
    const int64_t chunk = 4099;
    Tensor out = Tensor::empty({n * chunk}, DType::F32, dev);
    comm.all_gather(host_ramp(r, chunk).to(dev), out);
    EXPECT_EQ(mismatches(out, [&](int64_t i) { return contribution(static_cast<int>(i / chunk), i % chunk); }), 0)
        << "rank " << r << " all_gather";

    Tensor mine = Tensor::empty({chunk}, DType::F32, dev);
    comm.reduce_scatter(host_ramp(r, n * chunk).to(dev), mine);
    const float ranks_sum = static_cast<float>(n * (n + 1) / 2);
    EXPECT_EQ(mismatches(mine, [&](int64_t i) { return ranks_sum * static_cast<float>((r * chunk + i) % 13 - 6); }), 0)
        << "rank " << r << " reduce_scatter";

    Tensor b = (r == n - 1 ? host_ramp(r, chunk) : Tensor::zeros({chunk})).to(dev);
    comm.broadcast(b, n - 1);
    EXPECT_EQ(mismatches(b, [&](int64_t i) { return contribution(n - 1, i); }), 0) << "rank " << r << " broadcast";
  });
}

// Every rank sends to the next and receives from the previous at once: with blocking sends
// this is the deadlock the communicator's deferred isend/irecv exist to avoid.
TEST(NcclGpu, RingOfIsendIrecv) {
  on_every_rank("ring", [](Communicator& comm) {
    const int r = comm.rank(), n = comm.size();
    const Device dev = Device::cuda(r);
    const Tensor out = host_ramp(r, kCount).to(dev);
    Tensor in = Tensor::empty({kCount}, DType::F32, dev);
    auto s = comm.isend(out, (r + 1) % n);
    auto v = comm.irecv(in, (r + n - 1) % n);
    s->wait();
    v->wait();
    const int from = (r + n - 1) % n;
    EXPECT_EQ(mismatches(in, [&](int64_t i) { return contribution(from, i); }), 0) << "rank " << r << " ring";
  });
}

}  // namespace
