#include "parallel/mpi_communicator.h"

#include <climits>
#include <cstdlib>
#include <string>

#include "parallel/rendezvous.h"

namespace anvil {

namespace {

MPI_Datatype mpi_type(DType dt) {
  switch (dt) {
    case DType::F32: return MPI_FLOAT;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::I8: return MPI_INT8_T;
    case DType::U8: return MPI_UINT8_T;
    case DType::BF16: case DType::F16: return MPI_UINT16_T;  // moved, never reduced
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op, DType dt) {
  ANVIL_CHECK(dt != DType::BF16 && dt != DType::F16, "MPI cannot reduce ", dtype_name(dt),
              " tensors — reduce in f32 (or use the NCCL backend)");
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_SUM;
}

int count_of(int64_t n, const char* op) {
  ANVIL_CHECK(n <= INT_MAX, op, ": ", n, " elements exceed MPI's int count — split the buffer");
  return static_cast<int>(n);
}

void check(int rc, const char* op) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  ANVIL_FAIL("MPI ", op, " failed: ", std::string(text, len));
}

void require_host(const Tensor& t, const char* op) {
  ANVIL_CHECK(t.device().is_cpu() && t.is_contiguous(), op, " on ", t.describe(),
              " needs a contiguous host tensor (the MPI backend moves host buffers)");
}

// `buffer` (optional) keeps a point-to-point message's storage alive while MPI reads or writes it.
class MpiHandle final : public CommHandle {
 public:
  explicit MpiHandle(MPI_Request r, Tensor buffer = Tensor()) : request_(r), buffer_(std::move(buffer)) {}
  ~MpiHandle() override {
    if (request_ != MPI_REQUEST_NULL) MPI_Wait(&request_, MPI_STATUS_IGNORE);
  }
  void wait() override { check(MPI_Wait(&request_, MPI_STATUS_IGNORE), "wait"); }
  bool test() override {
    int done = 0;
    check(MPI_Test(&request_, &done, MPI_STATUS_IGNORE), "test");
    return done != 0;
  }

 private:
  MPI_Request request_;
  Tensor buffer_;
};

}  // namespace

namespace {
Rendezvous& joined() {
  static Rendezvous r;
  return r;
}
}  // namespace

void ensure_mpi_initialized() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  const LaunchInfo launch = launch_info();
  const char* mode = std::getenv("ANVIL_RENDEZVOUS");
  const bool off = mode && std::string(mode) == "off";
  if (launch.needs_rendezvous() && !off) {
    const char* t = std::getenv("ANVIL_RENDEZVOUS_TIMEOUT");
    const double timeout = t && std::atof(t) > 0 ? std::atof(t) : 120.0;
    joined() = rendezvous_join(launch, rendezvous_dir(launch), timeout);
  } else {
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "init");
  }
  // Errors come back as codes so they become anvil::Errors instead of aborting.
  MPI_Comm_set_errhandler(world_comm(), MPI_ERRORS_RETURN);
  std::atexit([] {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (joined().world != MPI_COMM_NULL) {
      // Connected singletons hang in MPI_Finalize (rendezvous.h): leave without it.
      rendezvous_cleanup(joined());
      return;
    }
    MPI_Finalize();
  });
}

MPI_Comm world_comm() { return joined().world != MPI_COMM_NULL ? joined().world : MPI_COMM_WORLD; }

void abort_job(int code) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) MPI_Abort(world_comm(), code);
  std::_Exit(code);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::world() {
  ensure_mpi_initialized();
  MPI_Comm dup;
  check(MPI_Comm_dup(world_comm(), &dup), "comm_dup");
  return std::make_unique<MpiCommunicator>(dup);
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : comm_(comm) {
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::all_reduce(Tensor& t, ReduceOp op) {
  require_host(t, "all_reduce");
  count_payload(t.nbytes());
  check(MPI_Allreduce(MPI_IN_PLACE, t.raw_data(), count_of(t.numel(), "all_reduce"), mpi_type(t.dtype()),
                      mpi_op(op, t.dtype()), comm_),
        "all_reduce");
}

std::unique_ptr<CommHandle> MpiCommunicator::all_reduce_async(Tensor& t, ReduceOp op) {
  require_host(t, "all_reduce_async");
  count_payload(t.nbytes());
  MPI_Request r;
  check(MPI_Iallreduce(MPI_IN_PLACE, t.raw_data(), count_of(t.numel(), "all_reduce"), mpi_type(t.dtype()),
                       mpi_op(op, t.dtype()), comm_, &r),
        "all_reduce_async");
  return std::make_unique<MpiHandle>(r);
}

void MpiCommunicator::reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) {
  require_host(in, "reduce_scatter");
  require_host(out, "reduce_scatter");
  ANVIL_CHECK(in.numel() == out.numel() * size_ && in.dtype() == out.dtype(), "reduce_scatter: input ",
              in.describe(), " must hold ", size_, " x output ", out.describe());
  count_payload(in.nbytes());
  check(MPI_Reduce_scatter_block(in.raw_data(), out.raw_data(), count_of(out.numel(), "reduce_scatter"),
                                 mpi_type(in.dtype()), mpi_op(op, in.dtype()), comm_),
        "reduce_scatter");
}

std::unique_ptr<CommHandle> MpiCommunicator::reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) {
  require_host(in, "reduce_scatter_async");
  require_host(out, "reduce_scatter_async");
  ANVIL_CHECK(in.numel() == out.numel() * size_ && in.dtype() == out.dtype(), "reduce_scatter_async: input ",
              in.describe(), " must hold ", size_, " x output ", out.describe());
  count_payload(in.nbytes());
  MPI_Request r;
  check(MPI_Ireduce_scatter_block(in.raw_data(), out.raw_data(), count_of(out.numel(), "reduce_scatter"),
                                  mpi_type(in.dtype()), mpi_op(op, in.dtype()), comm_, &r),
        "reduce_scatter_async");
  return std::make_unique<MpiHandle>(r);
}

void MpiCommunicator::all_gather(const Tensor& in, Tensor& out) {
  require_host(in, "all_gather");
  require_host(out, "all_gather");
  ANVIL_CHECK(out.numel() == in.numel() * size_ && in.dtype() == out.dtype(), "all_gather: output ",
              out.describe(), " must hold ", size_, " x input ", in.describe());
  count_payload(in.nbytes());
  check(MPI_Allgather(in.raw_data(), count_of(in.numel(), "all_gather"), mpi_type(in.dtype()), out.raw_data(),
                      count_of(in.numel(), "all_gather"), mpi_type(in.dtype()), comm_),
        "all_gather");
}

void MpiCommunicator::all_to_all(const Tensor& in, Tensor& out) {
  require_host(in, "all_to_all");
  require_host(out, "all_to_all");
  ANVIL_CHECK(in.numel() == out.numel() && in.numel() % size_ == 0 && in.dtype() == out.dtype(), "all_to_all: ",
              in.describe(), " and ", out.describe(), " must be equal and split into ", size_, " chunks");
  count_payload(in.nbytes());
  const int chunk = count_of(in.numel() / size_, "all_to_all");
  check(MPI_Alltoall(in.raw_data(), chunk, mpi_type(in.dtype()), out.raw_data(), chunk, mpi_type(in.dtype()), comm_),
        "all_to_all");
}

void MpiCommunicator::all_to_allv(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                                  const std::vector<int64_t>& recv_counts) {
  require_host(in, "all_to_allv");
  require_host(out, "all_to_allv");
  ANVIL_CHECK(static_cast<int>(send_counts.size()) == size_ && static_cast<int>(recv_counts.size()) == size_,
              "all_to_allv: need one send and one receive count per rank (", size_, ")");
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  int64_t s_total = 0, r_total = 0;
  for (int i = 0; i < size_; ++i) {
    sd[i] = count_of(s_total, "all_to_allv");
    rd[i] = count_of(r_total, "all_to_allv");
    sc[i] = count_of(send_counts[i], "all_to_allv");
    rc[i] = count_of(recv_counts[i], "all_to_allv");
    s_total += send_counts[i];
    r_total += recv_counts[i];
  }
  ANVIL_CHECK(s_total <= in.numel() && r_total <= out.numel(), "all_to_allv: counts (", s_total, " out, ", r_total,
              " in) exceed the buffers ", in.describe(), " / ", out.describe());
  count_payload(static_cast<size_t>(s_total) * dtype_size(in.dtype()));
  check(MPI_Alltoallv(in.raw_data(), sc.data(), sd.data(), mpi_type(in.dtype()), out.raw_data(), rc.data(), rd.data(),
                      mpi_type(out.dtype()), comm_),
        "all_to_allv");
}

void MpiCommunicator::broadcast(Tensor& t, int root) {
  require_host(t, "broadcast");
  if (rank_ == root) count_payload(t.nbytes());
  check(MPI_Bcast(t.raw_data(), count_of(t.numel(), "broadcast"), mpi_type(t.dtype()), root, comm_), "broadcast");
}

void MpiCommunicator::send(const Tensor& t, int dst, int tag) {
  require_host(t, "send");
  count_payload(t.nbytes());
  check(MPI_Send(t.raw_data(), count_of(t.numel(), "send"), mpi_type(t.dtype()), dst, tag, comm_), "send");
}

void MpiCommunicator::recv(Tensor& t, int src, int tag) {
  require_host(t, "recv");
  check(MPI_Recv(t.raw_data(), count_of(t.numel(), "recv"), mpi_type(t.dtype()), src, tag, comm_,
                 MPI_STATUS_IGNORE),
        "recv");
}

std::unique_ptr<CommHandle> MpiCommunicator::isend(const Tensor& t, int dst, int tag) {
  require_host(t, "isend");
  count_payload(t.nbytes());
  MPI_Request r;
  check(MPI_Isend(t.raw_data(), count_of(t.numel(), "isend"), mpi_type(t.dtype()), dst, tag, comm_, &r), "isend");
  return std::make_unique<MpiHandle>(r, t);
}

std::unique_ptr<CommHandle> MpiCommunicator::irecv(Tensor& t, int src, int tag) {
  require_host(t, "irecv");
  MPI_Request r;
  check(MPI_Irecv(t.raw_data(), count_of(t.numel(), "irecv"), mpi_type(t.dtype()), src, tag, comm_, &r), "irecv");
  return std::make_unique<MpiHandle>(r, t);
}

void MpiCommunicator::barrier() { check(MPI_Barrier(comm_), "barrier"); }

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) const {
  MPI_Comm sub;
  check(MPI_Comm_split(comm_, color, key, &sub), "comm_split");
  return std::make_unique<MpiCommunicator>(sub);
}

}  // namespace anvil
