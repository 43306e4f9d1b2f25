// How every backend's matrix products see an operand: a 2-D [rows, cols] or 3-D
// [batch, rows, cols] tensor as a stack of row-major matrices (last dimension contiguous,
// any row stride >= cols, so column slices of wider buffers qualify), and when two such
// views of one buffer may share an element. Device- and dtype-agnostic: each backend
// checks device and dtype itself before building the layout.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/tensor.h"

namespace anvil::kernels {

// `batch` row-major [rows, cols] matrices: element (i, r, j) at
// p + (i * batch_stride + r * ld + j) elements of `dtype`.
struct MatrixLayout {
  char* p = nullptr;  // the first element (the tensor's raw_data())
  DType dtype = DType::F32;
  int64_t batch = 1, rows = 0, cols = 0;
  int64_t ld = 0;            // row stride in elements (>= cols)
  int64_t batch_stride = 0;  // in elements; 0 when the batch is 1 (broadcast)

  size_t esize() const { return dtype_size(dtype); }
  // Matrix i of the stack.
  char* at(int64_t i) const { return p + static_cast<int64_t>(esize()) * i * batch_stride; }
  template <class T> T* data() const { return reinterpret_cast<T*>(p); }
};

// t's layout; throws naming op, name and t's shape/strides unless t is 2-D or 3-D with a
// contiguous last dimension and a row stride of at least its column count.
MatrixLayout matrix_layout(const char* op, const char* name, const Tensor& t);

// True when two views of one storage could share an element. Row-strided views with the
// same row stride whose column ranges never meet are disjoint although their address
// spans interleave (e.g. column slices of one buffer). Views of different dtypes on one
// storage are assumed to overlap.
bool views_may_overlap(const Tensor& c, const Tensor& x);

}  // namespace anvil::kernels
