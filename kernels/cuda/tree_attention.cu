// Tree attention on CUDA (kernels/tree_attention.h): one warp per (row, node, head), the lanes
// splitting the head dim; an online softmax over the prefix and the node's visible tree slots.
// A verification scores a few dozen nodes, so this plain kernel is not the decoder's cost.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace anvil::kernels::cuda {
namespace {

constexpr int kMaxPerLane = 8;  // head dims up to 256

struct Strides {
  int64_t b, t, h;
};

template <class T>
__global__ void tree_attention_kernel(const T* q, const T* k, const T* v, T* out, const int32_t* visible, Strides sq,
                                      Strides sk, Strides sv, Strides so, int B, int Tn, int Hq, int group, int D,
                                      int64_t prefix, float scale) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= B * Tn * Hq) return;
  const int h = warp % Hq, i = (warp / Hq) % Tn, b = warp / (Hq * Tn), kvh = h / group;
  float qr[kMaxPerLane], acc[kMaxPerLane];
  const T* qi = q + b * sq.b + i * sq.t + h * sq.h;
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int c = lane + 32 * r;
    qr[r] = c < D ? to_f32(qi[c]) * scale : 0.0f;
    acc[r] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = 0; j < prefix + Tn; ++j) {
    if (j >= prefix && visible[i * Tn + (j - prefix)] == 0) continue;
    const T* kj = k + b * sk.b + j * sk.t + kvh * sk.h;
    float dot = 0.0f;
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r) {
      const int c = lane + 32 * r;
      if (c < D) dot += qr[r] * to_f32(kj[c]);
    }
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float m_new = fmaxf(m, dot), alpha = __expf(m - m_new), w = __expf(dot - m_new);
    l = l * alpha + w;
    m = m_new;
    const T* vj = v + b * sv.b + j * sv.t + kvh * sv.h;
#pragma unroll
    for (int r = 0; r < kMaxPerLane; ++r) {
      const int c = lane + 32 * r;
      if (c < D) acc[r] = acc[r] * alpha + w * to_f32(vj[c]);
    }
  }
  T* oi = out + b * so.b + i * so.t + h * so.h;
#pragma unroll
  for (int r = 0; r < kMaxPerLane; ++r) {
    const int c = lane + 32 * r;
    if (c < D) oi[c] = from_f32<T>(acc[r] / l);
  }
}

Strides strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

}  // namespace

void tree_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int64_t prefix,
                            const Tensor& visible, Tensor& out) {
  const char* op = "tree_attention_forward";
  OpContext ctx(op, "q", q);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"q", &q}, {"k", &k}, {"v", &v}, {"out", &out}}) {
    ctx.require_dtype(name, *t, q.dtype());
    ctx.require_float(name, *t);
    ANVIL_CHECK(t->dim() == 4 && (t->stride(3) == 1 || t->size(3) <= 1), op, ": ", name, " must be [B, T, H, D] with a "
                "contiguous last dim, got ", t->describe());
  }
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Tk = k.size(1), Hkv = k.size(2);
  ANVIL_CHECK(k.size(0) == B && k.size(3) == D && v.shape() == k.shape() && Hkv >= 1 && Hq % Hkv == 0, op, ": k ",
              k.describe(), " and v ", v.describe(), " do not fit q ", q.describe(), " (same B and D, Hq % Hkv == 0)");
  ANVIL_CHECK(out.shape() == q.shape(), op, ": out ", out.describe(), " must have the shape of q ", q.describe());
  ANVIL_CHECK(prefix >= 0 && prefix + T <= Tk, op, ": the prefix of ", prefix, " slots and ", T, " tree nodes need ",
              prefix + T, " key slots, k has ", Tk);
  ANVIL_CHECK(D <= 32 * kMaxPerLane, op, ": head dim ", D, " exceeds the ", 32 * kMaxPerLane, " this kernel takes");
  ANVIL_CHECK(visible.shape() == Shape({T, T}), op, ": visible must be i32 [T, T] = [", T, ", ", T, "], got ",
              visible.describe());
  const int32_t* vis = ctx.contiguous_i32("visible", visible);
  const int64_t warps = B * T * Hq;
  if (warps == 0 || D == 0) return;
  with_float_type(q.dtype(), [&](auto tag) {
    using E = decltype(tag);
    tree_attention_kernel<E><<<blocks_for(warps * 32, kThreads, 1 << 30), kThreads, 0, ctx.stream()>>>(
        static_cast<const E*>(q.raw_data()), static_cast<const E*>(k.raw_data()), static_cast<const E*>(v.raw_data()),
        static_cast<E*>(out.raw_data()), vis, strides_of(q), strides_of(k), strides_of(v), strides_of(out),
        static_cast<int>(B), static_cast<int>(T), static_cast<int>(Hq), static_cast<int>(Hq / Hkv),
        static_cast<int>(D), prefix, scale);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace anvil::kernels::cuda
