#include "kernels/cpu/common.h"

namespace anvil::kernels::cpu {

void require_cpu(const char* op, const char* name, const Tensor& t) {
  ANVIL_CHECK(t.defined(), op, ": ", name, " is an undefined tensor — allocate it before calling ", op);
  ANVIL_CHECK(t.device().is_cpu(), op, ": ", name, " is ", t.describe(), " but the CUDA backend is not built for ",
              op, " yet — copy the tensors to the CPU or build with CUDA support");
}

void require_cpu_dtype(const char* op, const char* name, const Tensor& t, DType dtype) {
  require_cpu(op, name, t);
  ANVIL_CHECK(t.dtype() == dtype, op, ": ", name, " is ", t.describe(), " but must be ", dtype_name(dtype),
              " — convert it with .to(", dtype_name(dtype), ")");
}

Rows as_rows(const char* op, const char* name, const Tensor& t) {
  require_cpu_dtype(op, name, t, DType::F32);
  Rows v;
  v.p = t.data<float>();
  const int nd = t.dim();
  if (nd == 0) {
    v.rows = v.cols = v.ld = 1;
    return v;
  }
  v.cols = t.size(-1);
  ANVIL_CHECK(v.cols <= 1 || t.stride(-1) == 1, op, ": ", name, " ", t.describe(),
              " needs a contiguous last dimension — call .contiguous() first");
  v.rows = 1;
  v.ld = v.cols;
  // Collapse the leading dims (innermost first); size-1 dims impose nothing.
  bool have_ld = false;
  int64_t expect = 0;  // stride the next outer dim must have
  for (int d = nd - 2; d >= 0; --d) {
    const int64_t n = t.size(d), s = t.stride(d);
    if (n != 1) {
      if (!have_ld) {
        v.ld = s;
        have_ld = true;
      } else {
        ANVIL_CHECK(s == expect, op, ": ", name, " ", t.describe(), " has leading dimensions that cannot be ",
                    "flattened into rows (strides ", shape_str(t.strides()), ") — call .contiguous() first");
      }
      expect = s * n;
    }
    v.rows *= n;
  }
  ANVIL_CHECK(v.rows <= 1 || v.ld >= v.cols, op, ": ", name, " ", t.describe(), " has overlapping rows (row stride ",
              v.ld, " < ", v.cols, ") — call .contiguous() first");
  if (v.rows <= 1) v.ld = v.cols;
  return v;
}

float* contiguous_f32(const char* op, const char* name, const Tensor& t) {
  require_cpu_dtype(op, name, t, DType::F32);
  ANVIL_CHECK(t.is_contiguous(), op, ": ", name, " ", t.describe(), " must be contiguous — call .contiguous() first");
  return t.data<float>();
}

const int32_t* contiguous_i32(const char* op, const char* name, const Tensor& t) {
  require_cpu_dtype(op, name, t, DType::I32);
  ANVIL_CHECK(t.is_contiguous(), op, ": ", name, " ", t.describe(), " must be contiguous — call .contiguous() first");
  return t.data<int32_t>();
}

void require_same_shape(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                        const Tensor& b) {
  ANVIL_CHECK(a.shape() == b.shape(), op, ": ", name_a, " has shape ", shape_str(a.shape()), " but ", name_b,
              " has shape ", shape_str(b.shape()), " — they must match");
}

void require_numel(const char* op, const char* name, const Tensor& t, int64_t numel, const char* what) {
  ANVIL_CHECK(t.numel() == numel, op, ": ", name, " has shape ", shape_str(t.shape()), " (", t.numel(),
              " elements) but ", what, " needs ", numel, " elements");
}

ColumnPartials::ColumnPartials(int64_t rows, int64_t cols, int arrays) : rows_(rows), cols_(cols) {
  // At most 64 chunks of at least 32 rows: enough parallelism, bounded memory.
  chunk_rows_ = std::max<int64_t>(32, (rows + 63) / 64);
  chunks_ = (rows + chunk_rows_ - 1) / chunk_rows_;
  buf_.assign(static_cast<size_t>(arrays) * chunks_ * cols_, 0.0f);
}

void ColumnPartials::reduce(int a, float* out, bool accumulate) const {
  constexpr int64_t kBlock = 256;
  const float* base = buf_.data() + static_cast<size_t>(a) * chunks_ * cols_;
  const int64_t nblocks = (cols_ + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (chunks_ * cols_ >= kParallelMin)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t j0 = b * kBlock, n = std::min(cols_, j0 + kBlock) - j0;
    double acc[kBlock];
    for (int64_t j = 0; j < n; ++j) acc[j] = accumulate ? out[j0 + j] : 0.0;
    for (int64_t c = 0; c < chunks_; ++c) {
      const float* p = base + c * cols_ + j0;
      for (int64_t j = 0; j < n; ++j) acc[j] += p[j];
    }
    for (int64_t j = 0; j < n; ++j) out[j0 + j] = static_cast<float>(acc[j]);
  }
}

}  // namespace anvil::kernels::cpu
