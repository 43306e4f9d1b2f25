#include "kernels/shape_checks.h"

#include <cmath>

namespace anvil::kernels {

AttentionDims attention_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                             int64_t q_offset, int64_t window) {
  AttentionDims d;
  d.B = q.size(0), d.Tq = q.size(1), d.Hq = q.size(2), d.D = q.size(3);
  d.Tk = k.size(1), d.Hkv = k.size(2);
  ANVIL_CHECK(k.size(0) == d.B && v.size(0) == d.B, op, ": batch sizes differ: q ", q.describe(), ", k ",
              k.describe(), ", v ", v.describe());
  ANVIL_CHECK(k.size(3) == d.D && v.size(3) == d.D, op, ": head dims differ: q ", q.describe(), ", k ",
              k.describe(), ", v ", v.describe());
  ANVIL_CHECK(v.shape() == k.shape(), op, ": k ", k.describe(), " and v ", v.describe(), " must have the same shape");
  ANVIL_CHECK(d.Hkv > 0 && d.Hq % d.Hkv == 0, op, ": query heads Hq = ", d.Hq, " must be a multiple of KV heads Hkv = ",
              d.Hkv, " (q ", q.describe(), ", k ", k.describe(), ")");
  ANVIL_CHECK(q_offset >= 0 && q_offset + d.Tq <= d.Tk, op, ": q_offset ", q_offset, " must lie in [0, Tk - Tq] = [0, ",
              d.Tk - d.Tq, "] (q ", q.describe(), ", k ", k.describe(), ") — query i sits at position q_offset + i");
  ANVIL_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  ANVIL_CHECK(window >= 0, op, ": window must be >= 0 (0 = no sliding window), got ", window);
  d.group = d.Hq / d.Hkv;
  d.q_offset = q_offset;
  d.window = window;
  d.scale = scale;
  return d;
}

int64_t rope_half_dim(const char* op, const char* xname, const Tensor& x, const Tensor& cos, int64_t start_pos) {
  const int64_t D = x.size(3), half = cos.size(1);
  ANVIL_CHECK(D == 2 * half, op, ": head dim of ", xname, " ", x.describe(), " is ", D, " but the tables ",
              cos.describe(), " are for head dim ", 2 * half);
  ANVIL_CHECK(x.stride(3) == 1 || D <= 1, op, ": the last dim of ", xname, " ", x.describe(),
              " must be contiguous (stride 1), got stride ", x.stride(3));
  const int64_t T = x.size(1);
  ANVIL_CHECK(start_pos >= 0 && start_pos + T <= cos.size(0), op, ": positions ", start_pos, " .. ",
              start_pos + T - 1, " (start_pos ", start_pos, ", T ", T, ") exceed the ", cos.size(0),
              " rows of the cos/sin tables — build the tables with max_positions >= start_pos + T");
  return half;
}

}  // namespace anvil::kernels
