#include "kernels/rows.h"

namespace anvil::kernels {

RowLayout row_layout(const char* op, const char* name, const Tensor& t) {
  RowLayout v;
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

void require_same_shape(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                        const Tensor& b) {
  ANVIL_CHECK(a.shape() == b.shape(), op, ": ", name_a, " has shape ", shape_str(a.shape()), " but ", name_b,
              " has shape ", shape_str(b.shape()), " — they must match");
}

void require_numel(const char* op, const char* name, const Tensor& t, int64_t numel, const char* what) {
  ANVIL_CHECK(t.numel() == numel, op, ": ", name, " has shape ", shape_str(t.shape()), " (", t.numel(),
              " elements) but ", what, " needs ", numel, " elements");
}

}  // namespace anvil::kernels
