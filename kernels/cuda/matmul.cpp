// Matrix products on CUDA through cuBLASLt: kernels/matmul.h's semantics, and the fused
// bias / GELU epilogue of kernels/cuda/gemm.h.
//
// Row-major to column-major: a row-major [r, c] matrix with row stride ld is the column-major
// [c, r] matrix with the same ld, its transpose. So C = op(A) op(B) is computed as the
// column-major C^T = op(B)^T op(A)^T: cuBLASLt's A is our b (op = trans_b), its B is our a
// (op = trans_a), m = N, n = M, and every leading dimension stays as it is.
//
// Precision: CUBLAS_COMPUTE_32F with an f32 scale type; for f32 operands that is true fp32
// (never TF32, which is CUBLAS_COMPUTE_32F_FAST_TF32), so results match the CPU's sgemm to
// rounding. bf16 operands accumulate in f32 and write f32 or bf16. cuBLASLt has no f32 x f32
// -> bf16 kernel, so that case goes through an f32 temporary.
//
// Per-call cost: a descriptor set (matmul desc, three layouts) and the heuristic's algorithm
// are cached per (device, shape, dtypes, transposes, leading dims, batch strides, pointer
// alignments, epilogue), so a call is a hash lookup plus cublasLtMatmul. Handles are one per
// device, workspaces (32 MiB, from the caching allocator) one per (device, stream) so work on
// two streams never shares scratch memory.
#include <cublasLt.h>

#include <algorithm>
#include <array>
#include <climits>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/cuda/runtime.h"
#include "kernels/cuda/device_check.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/matrix_kernels.h"
#include "kernels/cuda/ops.h"
#include "kernels/matrix_layout.h"

namespace anvil::kernels::cuda {
namespace {

using detail::MatrixView;

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

void check_cublas(cublasStatus_t status, const char* expr, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    ANVIL_FAIL("cuBLASLt error ", cublasLtGetStatusName(status), " (", cublasLtGetStatusString(status), ") from ",
               expr, " at ", __FILE__, ":", line);
}
#define ANVIL_CUBLAS_CHECK(expr) check_cublas((expr), #expr, __LINE__)

// One operand as a stack of row-major matrices (kernels/matrix_layout.h).
using Mat = MatrixLayout;

MatrixView view_of(const Mat& m) { return {m.p, m.dtype, m.batch, m.rows, m.cols, m.ld, m.batch_stride}; }

Mat as_mat(const char* op, const char* name, const Tensor& t, int device) {
  ANVIL_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
  ANVIL_CHECK(t.device() == Device::cuda(device), op, ": ", name, " is ", t.describe(), " but a is on cuda:", device,
              " — every operand must be on one device (copy with .to(Device::cuda(", device, ")))");
  ANVIL_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16, op, ": ", name, " is ", t.describe(),
              " but CUDA matrix products take f32 or bf16 — convert it with .to(DType::F32)");
  return matrix_layout(op, name, t);
}

std::string op_shape(const Tensor& t, bool trans) { return shape_str(t.shape()) + (trans ? " (transposed)" : ""); }

// A checked product: operands, sizes, and the device it runs on.
struct Problem {
  Mat a, b, c;
  int64_t M = 0, N = 0, K = 0, B = 0;
  int device = 0;
};

Problem check_problem(const char* op, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& c) {
  Problem p;
  p.device = detail::device_index(op, "a", a);
  p.a = as_mat(op, "a", a, p.device);
  p.b = as_mat(op, "b", b, p.device);
  p.c = as_mat(op, "c", c, p.device);
  ANVIL_CHECK(a.dtype() == b.dtype(), op, ": a ", a.describe(), " and b ", b.describe(),
              " must share a dtype — convert one with .to(dtype)");
  p.M = trans_a ? p.a.cols : p.a.rows;
  p.K = trans_a ? p.a.rows : p.a.cols;
  const int64_t Kb = trans_b ? p.b.cols : p.b.rows;
  p.N = trans_b ? p.b.rows : p.b.cols;
  ANVIL_CHECK(p.K == Kb, op, ": inner dimensions differ: a ", op_shape(a, trans_a), " has K = ", p.K, " but b ",
              op_shape(b, trans_b), " has K = ", Kb);
  ANVIL_CHECK(p.c.rows == p.M && p.c.cols == p.N, op, ": c has shape ", shape_str(c.shape()), " but a ",
              op_shape(a, trans_a), " @ b ", op_shape(b, trans_b), " is [", p.M, ", ", p.N, "]");
  const bool batched = a.dim() == 3 || b.dim() == 3;
  ANVIL_CHECK(c.dim() == (batched ? 3 : 2), op, ": c has shape ", shape_str(c.shape()), " but a ",
              shape_str(a.shape()), " and b ", shape_str(b.shape()), " need a ", batched ? "3-D" : "2-D", " output");
  p.B = p.c.batch;
  ANVIL_CHECK((p.a.batch == p.B || p.a.batch == 1) && (p.b.batch == p.B || p.b.batch == 1), op,
              ": batch sizes do not broadcast: a ", shape_str(a.shape()), ", b ", shape_str(b.shape()), ", c ",
              shape_str(c.shape()), " — a and b need c's batch or 1");
  ANVIL_CHECK(p.B <= 1 || c.stride(0) != 0, op, ": c ", c.describe(), " has a zero batch stride");
  ANVIL_CHECK(!views_may_overlap(c, a), op, ": c ", c.describe(), " overlaps a ", a.describe(),
              " in memory — write the product into a separate buffer");
  ANVIL_CHECK(!views_may_overlap(c, b), op, ": c ", c.describe(), " overlaps b ", b.describe(),
              " in memory — write the product into a separate buffer");
  for (int64_t v : {p.M, p.N, p.K, p.B, p.a.ld, p.b.ld, p.c.ld})
    ANVIL_CHECK(v <= INT_MAX, op, ": a ", a.describe(), ", b ", b.describe(), ", c ", c.describe(),
                " has a dimension or row stride above 2^31 - 1, more than cuBLASLt takes — split the product");
  return p;
}

cudaDataType_t cuda_type(DType dt) { return dt == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }

// Largest power of two (<= 256) dividing the address: cuBLASLt assumes 256-byte aligned
// operands unless told otherwise, and picks vectorised kernels accordingly.
uint32_t alignment_of(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  if (v == 0) return 256;
  return static_cast<uint32_t>(std::min<uintptr_t>(256, v & (~v + 1)));
}

// One cublasLtMatmul call in cuBLASLt's (column-major) terms.
struct GemmCall {
  int64_t m = 0, n = 0, k = 0, batch = 1;
  bool trans_a = false, trans_b = false;
  const void* A = nullptr;  // stored (trans_a ? k : m) x (trans_a ? m : k), column-major
  int64_t lda = 0, stride_a = 0;
  const void* B = nullptr;  // stored (trans_b ? n : k) x (trans_b ? k : n)
  int64_t ldb = 0, stride_b = 0;
  void* C = nullptr;  // m x n, read (beta != 0) and written
  int64_t ldc = 0, stride_c = 0;
  cudaDataType_t ab_type = CUDA_R_32F, c_type = CUDA_R_32F;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // m values
  cudaDataType_t bias_type = CUDA_R_32F;
  void* aux = nullptr;  // GELU input, m x n with aux_ld, aux_stride
  int64_t aux_ld = 0, aux_stride = 0;

  // The C matrix as a row-major view (our c): n rows of m columns.
  MatrixView c_view(DType dt) const { return {C, dt, batch, n, m, ldc, stride_c}; }
  MatrixView aux_view(DType dt) const { return {aux, dt, batch, n, m, aux_ld, aux_stride}; }
};

using PlanKey = std::array<int64_t, 25>;

struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
    for (int64_t v : k) {
      h ^= static_cast<uint64_t>(v);
      h *= 1099511628211ull;
    }
    return static_cast<size_t>(h);
  }
};

// Descriptors and the chosen algorithm for one key; kept for the life of the process.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool has_algo = false;
};

class GemmRunner {
 public:
  // Enqueues g on `stream`. False (nothing enqueued) when cuBLASLt has no algorithm for it.
  bool run(const GemmCall& g, float alpha, float beta, int device, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);  // descriptors are mutated (epilogue pointers) per call
    cublasLtHandle_t h = handle(device);
    Plan& plan = plan_for(g, device, h);
    if (!plan.has_algo) return false;
    if (g.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
      ANVIL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias,
                                                        sizeof g.bias));
      if (g.aux)
        ANVIL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux,
                                                          sizeof g.aux));
    }
    void* ws = workspace(device, stream);
    ANVIL_CUBLAS_CHECK(cublasLtMatmul(h, plan.desc, &alpha, g.A, plan.a, g.B, plan.b, &beta, g.C, plan.c, g.C,
                                      plan.c, &plan.algo, ws, kWorkspaceBytes, stream));
    return true;
  }

 private:
  cublasLtHandle_t handle(int device) {
    cublasLtHandle_t& h = handles_[device];
    if (h == nullptr) {
      anvil::cuda::DeviceGuard guard(device);
      ANVIL_CUBLAS_CHECK(cublasLtCreate(&h));
    }
    return h;
  }

  void* workspace(int device, cudaStream_t stream) {
    Tensor& ws = workspaces_[{device, stream}];
    if (!ws.defined()) {
      anvil::cuda::StreamGuard sg(device, stream);  // allocated on (and reused in order by) this stream
      ws = Tensor::empty({static_cast<int64_t>(kWorkspaceBytes)}, DType::U8, Device::cuda(device));
    }
    return ws.raw_data();
  }

  static PlanKey key_of(const GemmCall& g, int device) {
    return {device,
            g.m,
            g.n,
            g.k,
            g.batch,
            g.trans_a,
            g.trans_b,
            g.lda,
            g.ldb,
            g.ldc,
            g.stride_a,
            g.stride_b,
            g.stride_c,
            static_cast<int64_t>(g.ab_type),
            static_cast<int64_t>(g.c_type),
            static_cast<int64_t>(g.epilogue),
            static_cast<int64_t>(g.bias_type),
            g.aux != nullptr,
            g.aux_ld,
            g.aux_stride,
            alignment_of(g.A),
            alignment_of(g.B),
            alignment_of(g.C),
            alignment_of(g.bias),
            alignment_of(g.aux)};
  }

  static cublasLtMatrixLayout_t layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                                       int64_t stride) {
    cublasLtMatrixLayout_t l = nullptr;
    ANVIL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols),
                                                  ld));
    if (batch > 1) {
      const int32_t count = static_cast<int32_t>(batch);
      ANVIL_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
      ANVIL_CUBLAS_CHECK(
          cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    }
    return l;
  }

  Plan& plan_for(const GemmCall& g, int device, cublasLtHandle_t h) {
    const PlanKey key = key_of(g, device);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    Plan plan;
    ANVIL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    ANVIL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    ANVIL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (g.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
      ANVIL_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &g.epilogue, sizeof g.epilogue));
      const int32_t bias_type = g.bias_type;
      ANVIL_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type));
      // The heuristic reads the epilogue pointers for their alignment.
      ANVIL_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof g.bias));
      if (g.aux) {
        ANVIL_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof g.aux));
        ANVIL_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &g.aux_ld, sizeof g.aux_ld));
        if (g.batch > 1)
          ANVIL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE,
                                                            &g.aux_stride, sizeof g.aux_stride));
      }
    }
    plan.a = layout(g.ab_type, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k, g.lda, g.batch, g.stride_a);
    plan.b = layout(g.ab_type, g.trans_b ? g.n : g.k, g.trans_b ? g.k : g.n, g.ldb, g.batch, g.stride_b);
    plan.c = layout(g.c_type, g.m, g.n, g.ldc, g.batch, g.stride_c);

    cublasLtMatmulPreference_t pref = nullptr;
    ANVIL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t max_ws = kWorkspaceBytes;
    ANVIL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws,
                                                            sizeof max_ws));
    const uint32_t align_a = alignment_of(g.A), align_b = alignment_of(g.B), align_c = alignment_of(g.C);
    ANVIL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                            sizeof align_a));
    ANVIL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                            sizeof align_b));
    ANVIL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                            sizeof align_c));
    ANVIL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                            sizeof align_c));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(h, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    // NOT_SUPPORTED: no kernel for this combination. An epilogue cuBLASLt rejects in any other
    // way (bias type, alignment) also just means "not fused": the caller runs it separately.
    if (st != CUBLAS_STATUS_NOT_SUPPORTED && g.epilogue == CUBLASLT_EPILOGUE_DEFAULT) ANVIL_CUBLAS_CHECK(st);
    plan.has_algo = st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS &&
                    result.workspaceSize <= kWorkspaceBytes;
    if (plan.has_algo) plan.algo = result.algo;
    return plans_.emplace(key, plan).first->second;
  }

  std::mutex mutex_;
  std::unordered_map<int, cublasLtHandle_t> handles_;
  std::map<std::pair<int, cudaStream_t>, Tensor> workspaces_;
  std::unordered_map<PlanKey, Plan, PlanKeyHash> plans_;
};

// Process-wide and never destroyed: cuBLASLt objects must not be freed after the CUDA runtime
// has shut down at exit.
GemmRunner& runner() {
  static GemmRunner* r = new GemmRunner();
  return *r;
}

// The cuBLASLt calls that compute p (C = op(A) op(B)): one call when the batch is 1, when a
// batched untransposed a whose matrices lie back to back (as do c's) meets a shared b (one
// tall [B*M, K] product), or when all three are batched with non-zero strides (one
// strided-batched call); a broadcast operand otherwise gets one call per batch.
std::vector<GemmCall> gemm_calls(const Problem& p, bool trans_a, bool trans_b) {
  GemmCall base;
  base.m = p.N;
  base.n = p.M;
  base.k = p.K;
  base.trans_a = trans_b;
  base.trans_b = trans_a;
  base.lda = p.b.ld;
  base.ldb = p.a.ld;
  base.ldc = p.c.ld;
  base.ab_type = cuda_type(p.a.dtype);
  base.c_type = cuda_type(p.c.dtype);
  std::vector<GemmCall> calls;
  GemmCall g = base;
  if (p.B == 1) {
    g.A = p.b.p, g.B = p.a.p, g.C = p.c.p;
    calls.push_back(g);
  } else if (p.b.batch == 1 && p.a.batch == p.B && !trans_a && p.a.batch_stride == p.M * p.a.ld &&
             p.c.batch_stride == p.M * p.c.ld && p.B * p.M <= INT_MAX) {
    g.n = p.B * p.M;
    g.A = p.b.p, g.B = p.a.p, g.C = p.c.p;
    calls.push_back(g);
  } else if (p.a.batch == p.B && p.b.batch == p.B && p.a.batch_stride != 0 && p.b.batch_stride != 0) {
    g.batch = p.B;
    g.A = p.b.p, g.B = p.a.p, g.C = p.c.p;
    g.stride_a = p.b.batch_stride, g.stride_b = p.a.batch_stride, g.stride_c = p.c.batch_stride;
    calls.push_back(g);
  } else {
    for (int64_t i = 0; i < p.B; ++i) {
      g.A = p.b.at(p.b.batch == 1 ? 0 : i);
      g.B = p.a.at(p.a.batch == 1 ? 0 : i);
      g.C = p.c.at(i);
      calls.push_back(g);
    }
  }
  return calls;
}

void run_or_fail(const GemmCall& g, float alpha, float beta, int device, cudaStream_t stream, const Problem& p) {
  if (!runner().run(g, alpha, beta, device, stream))
    ANVIL_FAIL("matmul: cuBLASLt found no algorithm for [", p.M, ", ", p.K, "] @ [", p.K, ", ", p.N, "] (batch ", p.B,
               ", ", dtype_name(p.a.dtype), " -> ", dtype_name(p.c.dtype), ", row strides ", p.a.ld, "/", p.b.ld, "/",
               p.c.ld, ") — make the operands contiguous (.contiguous()) so they are aligned");
}

// c = alpha op(a) op(b) + beta c for a checked problem whose types cuBLASLt takes.
void run_product(const Problem& p, bool trans_a, bool trans_b, float alpha, float beta, cudaStream_t stream) {
  for (const GemmCall& g : gemm_calls(p, trans_a, trans_b)) run_or_fail(g, alpha, beta, p.device, stream, p);
}

// f32 operands with a bf16 c: the product in f32, then rounded into c.
void run_through_f32(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
                     float beta) {
  Tensor tmp = beta == 0.0f ? Tensor::empty(c.shape(), DType::F32, c.device()) : c.to(DType::F32);
  matmul(a, trans_a, b, trans_b, tmp, alpha, beta);
  c.copy_(tmp);
}

void matmul_epilogue(const char* op, const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias,
                     Tensor& c, bool gelu, Tensor* pre) {
  const Problem p = check_problem(op, a, trans_a, b, trans_b, c);
  ANVIL_CHECK(bias.defined() && bias.device() == c.device() && bias.dim() == 1 && bias.size(0) == p.N &&
                  (bias.dtype() == DType::F32 || bias.dtype() == DType::BF16) && bias.is_contiguous(),
              op, ": bias must be a contiguous f32 or bf16 [", p.N, "] tensor on ", c.device().str(), ", got ",
              bias.defined() ? bias.describe() : std::string("an undefined tensor"));
  Mat pm;
  if (pre) {
    pm = as_mat(op, "pre_gelu", *pre, p.device);
    ANVIL_CHECK(pre->shape() == c.shape() && pre->dtype() == c.dtype(), op, ": pre_gelu ", pre->describe(),
                " must have c's shape and dtype (", c.describe(), ")");
    ANVIL_CHECK(!views_may_overlap(*pre, a) && !views_may_overlap(*pre, b) && !views_may_overlap(*pre, c), op,
                ": pre_gelu ", pre->describe(), " overlaps an operand or c — give it its own buffer");
    ANVIL_CHECK(p.B <= 1 || pre->stride(0) != 0, op, ": pre_gelu ", pre->describe(), " has a zero batch stride");
  }
  if (p.M == 0 || p.N == 0 || p.B == 0) return;
  anvil::cuda::DeviceGuard guard(p.device);
  cudaStream_t stream = anvil::cuda::current_stream(p.device);
  const MatrixView* pre_view_ptr = nullptr;
  MatrixView pre_view;
  if (pre) {
    pre_view = view_of(pm);
    pre_view_ptr = &pre_view;
  }
  // Shapes cuBLASLt cannot take fused: an empty inner dimension, f32 -> bf16, a bias of another
  // dtype than c or unaligned, a GELU input buffer laid out differently from c.
  const bool fusable = p.K > 0 && !(p.a.dtype == DType::F32 && p.c.dtype == DType::BF16) &&
                       bias.dtype() == p.c.dtype && alignment_of(bias.raw_data()) >= 16 &&
                       (!pre || (pm.ld == p.c.ld && pm.batch_stride == p.c.batch_stride && pm.ld % 8 == 0 &&
                                 pm.batch_stride % 8 == 0));
  if (!fusable) {
    if (p.K == 0) detail::scale_matrices(view_of(p.c), 0.0f, stream);
    else matmul(a, trans_a, b, trans_b, c, 1.0f, 0.0f);
    detail::bias_activation(view_of(p.c), bias.raw_data(), bias.dtype(), gelu, pre_view_ptr, stream);
    return;
  }
  for (GemmCall g : gemm_calls(p, trans_a, trans_b)) {
    g.epilogue = pre ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : (gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS);
    g.bias = bias.raw_data();
    g.bias_type = cuda_type(bias.dtype());
    if (pre) {
      // c and pre_gelu share row and batch strides, so pre's matrix sits at c's offset.
      g.aux = pm.p + (static_cast<char*>(g.C) - p.c.p);
      g.aux_ld = g.ldc;
      g.aux_stride = g.stride_c;
    }
    if (runner().run(g, 1.0f, 0.0f, p.device, stream)) continue;
    // No fused kernel for this call: the plain product, then the epilogue pass.
    GemmCall plain = g;
    plain.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    plain.bias = nullptr;
    plain.aux = nullptr;
    run_or_fail(plain, 1.0f, 0.0f, p.device, stream, p);
    const MatrixView aux = g.aux_view(p.c.dtype);
    detail::bias_activation(g.c_view(p.c.dtype), bias.raw_data(), bias.dtype(), gelu, pre ? &aux : nullptr, stream);
  }
}

}  // namespace

void matmul(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha, float beta) {
  const Problem p = check_problem("matmul", a, trans_a, b, trans_b, c);
  if (p.M == 0 || p.N == 0 || p.B == 0) return;
  anvil::cuda::DeviceGuard guard(p.device);
  cudaStream_t stream = anvil::cuda::current_stream(p.device);
  if (p.K == 0) {  // op(A) @ op(B) is all zeros: C = beta * C (beta = 0 overwrites NaN).
    detail::scale_matrices(view_of(p.c), beta, stream);
    return;
  }
  if (p.a.dtype == DType::F32 && p.c.dtype == DType::BF16) {
    run_through_f32(a, trans_a, b, trans_b, c, alpha, beta);
    return;
  }
  run_product(p, trans_a, trans_b, alpha, beta, stream);
}

void matmul_bias(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias, Tensor& c,
                 bool gelu) {
  matmul_epilogue("matmul_bias", a, trans_a, b, trans_b, bias, c, gelu, nullptr);
}

void matmul_bias_gelu(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, const Tensor& bias, Tensor& c,
                      Tensor& pre_gelu) {
  matmul_epilogue("matmul_bias_gelu", a, trans_a, b, trans_b, bias, c, true, &pre_gelu);
}

}  // namespace anvil::kernels::cuda
