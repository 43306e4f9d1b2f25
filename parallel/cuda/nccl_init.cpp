// Creating NCCL communicators (the unique id over MPI or a shared file, ncclCommSplit),
// destroying them, and aborting them for the peer watchdog. Compiled only with the CUDA backend.
#include <algorithm>
#include <chrono>
#include <thread>

#include "core/cuda_device.h"
#include "parallel/cuda/nccl_state.h"

namespace anvil {

using namespace nccl_detail;

static_assert(kNcclIdBytes == NCCL_UNIQUE_ID_BYTES, "kNcclIdBytes must equal NCCL_UNIQUE_ID_BYTES");

namespace {

// Every live communicator's state, for abort_nccl_communicators (the peer watchdog's thread).
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::vector<NcclCommunicator::State*>& registry() {
  static std::vector<NcclCommunicator::State*> r;
  return r;
}

// ncclCommAbort on `s` unless it was aborted already; the communicator's device must be current.
bool abort_state(NcclCommunicator::State& s) {
  if (s.aborted.exchange(true) || s.comm == nullptr) return false;
  cudaSetDevice(s.device);
  ncclCommAbort(s.comm);
  return true;
}

}  // namespace

NcclCommunicator::State::State(ncclComm_t c, int dev, int r, int n, std::shared_ptr<Communicator> h)
    : comm(c), device(dev), rank(r), size(n), host(std::move(h)), connected(static_cast<size_t>(n), 0) {
  cuda::DeviceGuard guard(device);
  ready = cuda::Event();  // events belong to the device current when they are made
  scratch = Tensor::zeros({static_cast<int64_t>(size) + 1}, DType::U8, Device::cuda(device));
  barrier_word = Tensor::zeros({1}, DType::I32, Device::cuda(device));
  // Made on the compute stream, used on the comm stream from now on: settle them once.
  cuda::synchronize(device);
  cuda::record_stream(scratch, cuda::comm_stream(device));
  cuda::record_stream(barrier_word, cuda::comm_stream(device));
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry().push_back(this);
}

NcclCommunicator::State::~State() {
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto& r = registry();
    r.erase(std::remove(r.begin(), r.end(), this), r.end());
  }
  if (aborted.exchange(true) || comm == nullptr) return;
  // At process exit the CUDA runtime may already be gone: then leave the handle to the OS.
  if (cudaSetDevice(device) != cudaSuccess) return;
  ncclCommFinalize(comm);  // completes this rank's queued operations
  ncclCommDestroy(comm);
}

// ---- factories ----------------------------------------------------------------------------

namespace {

void check_device_index(int device) {
  const int visible = cuda_device_count();
  ANVIL_CHECK(visible > 0, "NCCL: no CUDA device is visible: ", cuda_unavailable_reason(),
              " — check CUDA_VISIBLE_DEVICES and the job's GPU request, or set run.device: cpu");
  ANVIL_CHECK(device >= 0 && device < visible, "NCCL: cuda:", device, " does not exist (", visible,
              " device(s) visible) — pass a device in [0, ", visible, ") or -1 to pick by local rank");
}

std::shared_ptr<NcclCommunicator::State> init_state(const ncclUniqueId& id, int rank, int size, int device,
                                                    std::shared_ptr<Communicator> host) {
  cuda::DeviceGuard guard(device);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 1;
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  if (r != ncclSuccess) {
    const char* last = ncclGetLastError(comm);
    if (comm) ncclCommAbort(comm);
    ANVIL_FAIL("NCCL communicator init (ncclCommInitRankConfig) failed on rank ", rank, " of ", size, " (cuda:",
               device, ", local rank ", node_local_rank(nullptr), "): ", ncclGetErrorString(r),
               last && *last ? std::string(" (") + last + ")" : std::string(), nccl_hint(r),
               ". Every rank of a node needs its own GPU: one task per GPU, or CUDA_VISIBLE_DEVICES per task");
  }
  try {
    return std::make_shared<NcclCommunicator::State>(comm, device, rank, size, std::move(host));
  } catch (...) {
    ncclCommAbort(comm);  // its device buffers could not be made: do not leak the communicator
    throw;
  }
}

std::vector<uint8_t> id_bytes(const ncclUniqueId& id) {
  return std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(&id), reinterpret_cast<const uint8_t*>(&id) + sizeof id);
}

ncclUniqueId id_from(const std::vector<uint8_t>& bytes) {
  ncclUniqueId id;
  ANVIL_CHECK(bytes.size() == sizeof id, "NCCL unique id of ", bytes.size(), " bytes, expected ", sizeof id);
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<uint8_t*>(&id));
  return id;
}

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> host, int device) {
  ANVIL_CHECK(host != nullptr, "make_nccl_communicator: needs a host (MPI) communicator to share the unique id over");
  // Decided together: a rank that cannot start must not leave the others waiting in the broadcast.
  std::string failure;
  try {
    if (device < 0) device = cuda_device_for_rank(host.get());
    check_device_index(device);
  } catch (const Error& e) {
    failure = e.what();
  }
  Tensor ok = Tensor::full({1}, failure.empty() ? 1 : 0, DType::I32);
  host->all_reduce(ok, ReduceOp::Min);
  ANVIL_CHECK(failure.empty(), failure);
  ANVIL_CHECK(ok.item() == 1, "make_nccl_communicator: another rank could not pick its CUDA device (its error says why)");

  // Byte 0 says whether rank 0 could make the id, so the others fail with it instead of hanging.
  std::vector<uint8_t> message(kNcclIdBytes + 1, 0);
  std::string id_failure;
  if (host->rank() == 0) {
    ncclUniqueId id;
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r == ncclSuccess) {
      message[0] = 1;
      const std::vector<uint8_t> b = id_bytes(id);
      std::copy(b.begin(), b.end(), message.begin() + 1);
    } else {
      id_failure = std::string(ncclGetErrorString(r)) + nccl_hint(r);
    }
  }
  message = broadcast_bytes(*host, message, message.size(), 0);
  ANVIL_CHECK(message[0] == 1, "NCCL: rank 0 could not create the unique id (ncclGetUniqueId)",
              id_failure.empty() ? std::string(" — see rank 0's error") : ": " + id_failure);
  const ncclUniqueId id = id_from(std::vector<uint8_t>(message.begin() + 1, message.end()));
  const int rank = host->rank(), size = host->size();
  return std::make_unique<NcclCommunicator>(init_state(id, rank, size, device, std::move(host)));
}

std::unique_ptr<Communicator> make_nccl_communicator(int rank, int size, const SharedFileId& where, int device) {
  ANVIL_CHECK(size >= 1 && rank >= 0 && rank < size, "make_nccl_communicator: rank ", rank, " of ", size);
  if (device < 0) device = cuda_device_for_rank(nullptr);
  check_device_index(device);
  std::vector<uint8_t> mine;
  if (rank == 0) {
    ncclUniqueId id;
    const ncclResult_t r = ncclGetUniqueId(&id);
    ANVIL_CHECK(r == ncclSuccess, "NCCL: ncclGetUniqueId failed on rank 0: ", ncclGetErrorString(r), nccl_hint(r));
    mine = id_bytes(id);
  }
  const ncclUniqueId id = id_from(exchange_id_via_file(where, rank, mine, kNcclIdBytes));
  auto state = init_state(id, rank, size, device, nullptr);
  if (rank == 0) remove_shared_id(where);  // init returned: every rank has read it
  return std::make_unique<NcclCommunicator>(std::move(state));
}

bool nccl_built() { return true; }

int abort_nccl_communicators(double timeout_s) {
  auto aborted = std::make_shared<std::atomic<int>>(-1);
  // On its own thread, so a hanging abort cannot keep the caller from exiting.
  std::thread([aborted] {
    std::lock_guard<std::mutex> lock(registry_mutex());
    int n = 0;
    for (NcclCommunicator::State* s : registry()) n += abort_state(*s) ? 1 : 0;
    aborted->store(n);
  }).detach();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (aborted->load() < 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return std::max(0, aborted->load());
}

void NcclCommunicator::abort() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  abort_state(*state_);
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) const {
  State& s = *state_;
  ANVIL_CHECK(color >= 0, "NCCL split: color ", color, " must be >= 0 (every rank joins a group)");
  s.check_alive("split");
  s.flush("split");
  cuda::DeviceGuard guard(s.device);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 1;
  ncclComm_t sub = nullptr;
  s.check(ncclCommSplit(s.comm, color, key, &sub, &config), "split (ncclCommSplit)");
  int rank = 0, size = 0;
  s.check(ncclCommUserRank(sub, &rank), "split (rank)");
  s.check(ncclCommCount(sub, &size), "split (size)");
  // The host side splits the same way, so CPU tensors keep travelling between the same ranks.
  std::shared_ptr<Communicator> host = s.host ? std::shared_ptr<Communicator>(s.host->split(color, key)) : nullptr;
  if (host && (host->rank() != rank || host->size() != size)) {
    ncclCommDestroy(sub);
    ANVIL_FAIL("NCCL split: NCCL placed this rank at ", rank, " of ", size, " but the host communicator at ",
               host->rank(), " of ", host->size(), " — the ranks passed different keys or colors");
  }
  return std::make_unique<NcclCommunicator>(std::make_shared<State>(sub, s.device, rank, size, std::move(host)));
}

}  // namespace anvil
