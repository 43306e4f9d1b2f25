#include "kernels/matrix_layout.h"

#include <algorithm>
#include <utility>

namespace anvil::kernels {

MatrixLayout matrix_layout(const char* op, const char* name, const Tensor& t) {
  ANVIL_CHECK(t.dim() == 2 || t.dim() == 3, op, ": ", name, " is ", t.describe(),
              " but must be 2-D [rows, cols] or 3-D [batch, rows, cols]");
  MatrixLayout m;
  m.p = static_cast<char*>(t.raw_data());
  m.dtype = t.dtype();
  m.rows = t.size(-2);
  m.cols = t.size(-1);
  ANVIL_CHECK(m.cols <= 1 || t.stride(-1) == 1, op, ": ", name, " ", t.describe(), " (strides ",
              shape_str(t.strides()), ") needs a contiguous last dimension — call .contiguous() first");
  m.ld = (m.rows <= 1 || m.cols == 0) ? std::max<int64_t>(1, m.cols) : t.stride(-2);
  ANVIL_CHECK(m.ld >= std::max<int64_t>(1, m.cols), op, ": ", name, " ", t.describe(), " has row stride ", m.ld,
              " smaller than its ", m.cols, " columns — call .contiguous() first");
  if (t.dim() == 3) {
    m.batch = t.size(0);
    m.batch_stride = m.batch == 1 ? 0 : t.stride(0);
  }
  return m;
}

namespace {

// [first, last] element offsets (from the storage start) a view touches; empty: first > last.
std::pair<int64_t, int64_t> span(const Tensor& t) {
  int64_t lo = t.offset(), hi = t.offset();
  for (int d = 0; d < t.dim(); ++d) {
    if (t.size(d) == 0) return {0, -1};
    const int64_t ext = (t.size(d) - 1) * t.stride(d);
    (ext < 0 ? lo : hi) += ext;
  }
  return {lo, hi};
}

}  // namespace

bool views_may_overlap(const Tensor& c, const Tensor& x) {
  if (!c.same_storage(x)) return false;
  if (c.dtype() != x.dtype()) return true;  // offsets count different units: assume the worst
  const auto sc = span(c), sx = span(x);
  if (sc.first > sc.second || sx.first > sx.second || sc.second < sx.first || sx.second < sc.first) return false;
  const int64_t ld = c.stride(-2);
  if (ld <= 0 || x.stride(-2) != ld) return true;
  for (const Tensor* t : {&c, &x})
    for (int d = 0; d + 1 < t->dim(); ++d)
      if (t->stride(d) % ld != 0) return true;
  const int64_t c0 = c.offset() % ld, x0 = x.offset() % ld;
  const int64_t c1 = c0 + c.size(-1), x1 = x0 + x.size(-1);
  return !(c1 <= ld && x1 <= ld && (c1 <= x0 || x1 <= c0));
}

}  // namespace anvil::kernels
