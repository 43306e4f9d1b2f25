// How every backend sees a tensor as a matrix: [rows, cols] with the last dimension
// contiguous and the leading dimensions collapsed into one row stride (so column slices
// of wider buffers qualify), and the shape checks the backends share.
#pragma once
#include <cstdint>
#include <initializer_list>

#include "core/tensor.h"

namespace anvil::kernels {

// rows x cols elements, row r starting ld elements after row r - 1.
struct RowLayout {
  int64_t rows = 0, cols = 0, ld = 0;
  bool dense() const { return rows <= 1 || ld == cols; }
};

// Views same-shaped operands as one long row when all are dense, so the kernels see one flat
// range (parallel blocks on the CPU, vector accesses on CUDA) instead of many short rows. R is
// either backend's row view (rows, cols, ld and dense() as in RowLayout).
template <class R>
void merge_dense(std::initializer_list<R*> views) {
  for (R* v : views)
    if (!v->dense()) return;
  for (R* v : views) {
    v->cols *= v->rows;
    v->ld = v->cols;
    v->rows = v->rows ? 1 : 0;
  }
}

// The row layout of t (any dtype, any device): its last dim must be contiguous and its
// leading dims must collapse into one uniform row stride; a 0-d tensor is one 1x1 row.
RowLayout row_layout(const char* op, const char* name, const Tensor& t);

// Throws naming op, both arguments and both shapes when the shapes differ.
void require_same_shape(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                        const Tensor& b);
// Throws unless t has exactly `numel` elements (any shape), naming `what` it should match.
void require_numel(const char* op, const char* name, const Tensor& t, int64_t numel, const char* what);

}  // namespace anvil::kernels
