#include "kernels/route_rows.h"

#include "kernels/backend.h"
#include "kernels/cpu/common.h"

namespace anvil::kernels {

namespace {
// Throws unless every index lies in [-1, N) (and, for a scatter, the rows >= 0 are distinct).
void check_index(const char* op, const int32_t* idx, int64_t M, int64_t N, bool distinct) {
  std::vector<uint8_t> seen(distinct ? static_cast<size_t>(N) : 0, 0);
  for (int64_t i = 0; i < M; ++i) {
    ANVIL_CHECK(idx[i] >= -1 && idx[i] < N, op, ": index ", idx[i], " at slot ", i, " is outside [-1, ", N, ")");
    if (!distinct || idx[i] < 0) continue;
    ANVIL_CHECK(!seen[static_cast<size_t>(idx[i])], op, ": row ", idx[i], " appears twice in the index (slot ", i,
                ") — each full row takes at most one compact row");
    seen[static_cast<size_t>(idx[i])] = 1;
  }
}
}  // namespace

void gather_rows(const Tensor& full, const Tensor& index, Tensor& out) {
  ANVIL_DISPATCH_CUDA(full, gather_rows, full, index, out);
  constexpr const char* op = "gather_rows";
  const int32_t* idx = cpu::contiguous_i32(op, "index", index);
  const cpu::Rows vf = cpu::as_rows(op, "full", full), vo = cpu::as_rows(op, "out", out);
  const int64_t M = index.numel(), C = vf.cols;
  ANVIL_CHECK(vo.rows == M && vo.cols == C, op, ": out has shape ", shape_str(out.shape()), " but index ",
              shape_str(index.shape()), " and full ", shape_str(full.shape()), " give [", M, ", ", C, "]");
  check_index(op, idx, M, vf.rows, false);
  cpu::parallel_rows(M, C, [&](int64_t i) {
    float* dst = vo.row(i);
    if (idx[i] < 0) std::fill(dst, dst + C, 0.0f);
    else std::memcpy(dst, vf.row(idx[i]), static_cast<size_t>(C) * sizeof(float));
  });
}

void scatter_add_rows(const Tensor& compact, const Tensor& index, Tensor& full) {
  ANVIL_DISPATCH_CUDA(full, scatter_add_rows, compact, index, full);
  constexpr const char* op = "scatter_add_rows";
  const int32_t* idx = cpu::contiguous_i32(op, "index", index);
  const cpu::Rows vc = cpu::as_rows(op, "compact", compact), vf = cpu::as_rows(op, "full", full);
  const int64_t M = index.numel(), C = vf.cols;
  ANVIL_CHECK(vc.rows == M && vc.cols == C, op, ": compact has shape ", shape_str(compact.shape()), " but index ",
              shape_str(index.shape()), " and full ", shape_str(full.shape()), " need [", M, ", ", C, "]");
  check_index(op, idx, M, vf.rows, true);
  cpu::parallel_rows(M, C, [&](int64_t i) {
    if (idx[i] < 0) return;
    const float* src = vc.row(i);
    float* dst = vf.row(idx[i]);
    for (int64_t j = 0; j < C; ++j) dst[j] += src[j];
  });
}

void row_dot(const Tensor& a, const Tensor& b, Tensor& out) {
  ANVIL_DISPATCH_CUDA(a, row_dot, a, b, out);
  constexpr const char* op = "row_dot";
  require_same_shape(op, "a", a, "b", b);
  const cpu::Rows va = cpu::as_rows(op, "a", a), vb = cpu::as_rows(op, "b", b);
  float* po = cpu::contiguous_f32(op, "out", out);
  require_numel(op, "out", out, va.rows, "a's rows");
  cpu::parallel_rows(va.rows, va.cols, [&](int64_t i) {
    double s = 0;
    const float *pa = va.row(i), *pb = vb.row(i);
    for (int64_t j = 0; j < va.cols; ++j) s += static_cast<double>(pa[j]) * pb[j];
    po[i] = static_cast<float>(s);
  });
}

}  // namespace anvil::kernels
