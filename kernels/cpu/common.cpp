#include "kernels/cpu/common.h"

namespace anvil::kernels::cpu {

void require_cpu(const char* op, const char* name, const Tensor& t) {
  ANVIL_CHECK(t.defined(), op, ": ", name, " is an undefined tensor — allocate it before calling ", op);
#ifdef ANVIL_WITH_CUDA
  ANVIL_CHECK(t.device().is_cpu(), op, ": ", name, " is ", t.describe(), " but this call of ", op,
              " runs on the CPU — put every operand on the device of its leading tensor (an op without a CUDA ",
              "kernel needs CPU tensors)");
#else
  ANVIL_CHECK(t.device().is_cpu(), op, ": ", name, " is ", t.describe(), " but the CUDA backend is not built for ",
              op, " — copy the tensors to the CPU or build where nvcc is found");
#endif
}

void require_cpu_dtype(const char* op, const char* name, const Tensor& t, DType dtype) {
  require_cpu(op, name, t);
  ANVIL_CHECK(t.dtype() == dtype, op, ": ", name, " is ", t.describe(), " but must be ", dtype_name(dtype),
              " — convert it with .to(", dtype_name(dtype), ")");
}

Rows as_rows(const char* op, const char* name, const Tensor& t) {
  require_cpu_dtype(op, name, t, DType::F32);
  const RowLayout l = row_layout(op, name, t);
  Rows v;
  v.p = t.data<float>();
  v.rows = l.rows;
  v.cols = l.cols;
  v.ld = l.ld;
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
