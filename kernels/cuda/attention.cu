// Causal grouped-query attention on CUDA (kernels/attention.h). bf16 shapes that cuDNN's
// fused SDPA takes go there (attention_cudnn.cpp); everything else — f32 (the fp32 test mode),
// head dims that are not a multiple of 8 (up to 256), q_offset other than 0 or Tk - Tq, one-query
// decode steps, packed rows (document boundaries: AttentionMask::segment_ids), drafting groups
// (AttentionMask::group_ids), shapes cuDNN refuses — runs the kernels below, FlashAttention-2
// style: tiles of 32 queries x 32 keys in shared memory, an online softmax, f32 arithmetic, O(T)
// memory. Document boundaries and drafting groups are one more visibility test per score each
// (same document id; the group rule of kernels/attention.h). With drafting groups a tile pair
// nothing of which is visible (real queries against mask blocks, masks of other anchors) is
// skipped after one block-wide test; tiles are not skipped by documents.
//
// Thread layout (all kernels): 256 threads = 8 warps; warp w owns tile rows w, w+8, w+16, w+24;
// for scores, lane j is key j of the tile (a full dot product over D per lane, no shuffles);
// for D-wide rows, lane owns columns lane + 32c. Shared K/V rows use an odd stride so the 32
// lanes reading 32 different keys at one column hit 32 different banks.
//
// Backward: D_i = rowsum(dO * O) first; then dK/dV with one block per (batch, KV head, key
// tile) looping over every query head of its group and every query tile that sees the keys,
// and dQ with one block per (batch, query head, query tile). Every output element is written by
// one thread in a fixed order — no atomics, so results are bitwise reproducible.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdlib>

#include "core/cuda/runtime.h"
#include "kernels/cuda/attention_internal.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_check.h"
#include "kernels/cuda/ops.h"

namespace anvil::kernels::cuda {
namespace {

using detail::AttentionDims;

constexpr int kBQ = 32;       // query rows per tile
constexpr int kBK = 32;       // keys per tile (one per lane)
constexpr int kWarps = 8;
static_assert(kThreads == kWarps * 32, "the attention kernels run kThreads (common.cuh) = kWarps warps");
constexpr int kRows = kBQ / kWarps;  // tile rows per warp
constexpr int kMaxHeadDim = 256;

// A [B, T, H, D] tensor: base pointer and element strides of b, t, h (d is contiguous).
struct BTHD {
  const void* p;
  int64_t sb, st, sh;
};

struct Params {
  BTHD q, k, v, o, dout, dq, dk, dv;
  float* lse;       // [B, Hq, Tq]
  float* Di;        // [B, Hq, Tq] (backward)
  int64_t Tq, Tk, Hq, Hkv, D, group, q_offset, window;
  const int32_t* seg;  // [B, Tk] document id per key slot (AttentionMask::segment_ids), or null
  const int32_t* grp;  // [B, Tk] -1 (real) or the anchor slot (mask) per slot (AttentionMask::group_ids), or null
  int ks;           // shared row stride of K and V tiles (odd)
  float scale;
};

template <typename T>
__device__ __forceinline__ const T* row_ptr(const BTHD& t, int64_t b, int64_t s, int64_t h) {
  return static_cast<const T*>(t.p) + b * t.sb + s * t.st + h * t.sh;
}
template <typename T>
__device__ __forceinline__ T* row_ptr_mut(const BTHD& t, int64_t b, int64_t s, int64_t h) {
  return const_cast<T*>(row_ptr<T>(t, b, s, h));
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Whether a query at slot pos with group id gq sees key j with group id gj (kernels/attention.h):
// real keys up to the query's slot (real query) or anchor (mask query), masks of its own anchor.
__device__ __forceinline__ bool group_sees(int32_t gq, int32_t gj, int64_t j) {
  return gj < 0 ? (gq < 0 || j <= gq) : gj == gq;
}

// Key j of row b is visible to the query at position pos: j <= pos, inside the window if any,
// in the query's document when the rows are packed, and by the group rule with drafting groups.
__device__ __forceinline__ bool visible(const Params& p, int64_t b, int64_t j, int64_t pos) {
  return j <= pos && (p.window == 0 || j > pos - p.window) &&
         (p.seg == nullptr || p.seg[b * p.Tk + j] == p.seg[b * p.Tk + pos]) &&
         (p.grp == nullptr || group_sees(p.grp[b * p.Tk + pos], p.grp[b * p.Tk + j], j));
}

// Whether any query of the tile [q0, q0 + qn) sees any key of [k0, k0 + kn): four visibility
// tests per thread and one block-wide vote. A tile pair that sees nothing adds nothing (its
// probabilities are all 0), so skipping it changes no result. Every thread of the block calls it.
__device__ bool tile_pair_visible(const Params& p, int64_t b, int64_t q0, int qn, int64_t k0, int kn) {
  bool any = false;
  for (int e = threadIdx.x; e < kBQ * kBK && !any; e += blockDim.x) {
    const int i = e / kBK, j = e - i * kBK;
    any = i < qn && j < kn && visible(p, b, k0 + j, p.q_offset + q0 + i);
  }
  return __syncthreads_or(any) != 0;
}

// rows [t0, t0 + n) of head h into dst [kBQ or kBK][stride] as f32 times mul; rows >= n zeroed.
template <typename T>
__device__ void load_tile(const BTHD& src, int64_t b, int64_t t0, int n, int64_t h, int D, int stride, float mul,
                          int tile_rows, float* dst) {
  for (int e = threadIdx.x; e < tile_rows * D; e += blockDim.x) {
    const int i = e / D, c = e - i * D;
    dst[i * stride + c] = i < n ? mul * to_f32(row_ptr<T>(src, b, t0 + i, h)[c]) : 0.0f;
  }
}

// The lane's columns lane + 32c of a D-wide f32 row (0 past D).
template <int DC>
__device__ __forceinline__ void load_cols(const float* row, int D, int lane, float (&out)[DC]) {
#pragma unroll
  for (int c = 0; c < DC; ++c) {
    const int col = lane + 32 * c;
    out[c] = col < D ? row[col] : 0.0f;
  }
}

// mul * v into the lane's columns of a D-wide row of T.
template <typename T, int DC>
__device__ __forceinline__ void store_cols(T* row, const float (&v)[DC], float mul, int D, int lane) {
#pragma unroll
  for (int c = 0; c < DC; ++c) {
    const int col = lane + 32 * c;
    if (col < D) row[col] = from_f32<T>(v[c] * mul);
  }
}

// acc[r] += w_j[r] * (row j of the tile) over the tile's kn rows (stride ks), w_j being lane
// j's w: P V in the forward, dS K for dQ.
template <int DC>
__device__ __forceinline__ void accumulate_tile(float (&acc)[kRows][DC], const float (&w)[kRows], const float* tile,
                                                int kn, int D, int ks, int lane) {
  for (int j = 0; j < kn; ++j) {
    float tj[DC];
    load_cols(tile + j * ks, D, lane, tj);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float wj = __shfl_sync(0xffffffffu, w[r], j);
#pragma unroll
      for (int c = 0; c < DC; ++c) acc[r][c] += wj * tj[c];
    }
  }
}

// The first key any query of the tile starting at q0 can see (window lower bound).
__device__ __forceinline__ int64_t first_key(const Params& p, int64_t q0) {
  return p.window > 0 ? max(int64_t{0}, p.q_offset + q0 - p.window + 1) : 0;
}

// S[r] = (scale q_row) . k_lane for the warp's rows, and (with DP) dP[r] = dO_row . v_lane.
template <bool DP>
__device__ __forceinline__ void tile_scores(const float* Qs, const float* dOs, const float* Ks, const float* Vs,
                                            int D, int ks, int warp, int lane, float (&s)[kRows],
                                            float (&dp)[kRows]) {
#pragma unroll
  for (int r = 0; r < kRows; ++r) s[r] = dp[r] = 0.0f;
  const float* kr = Ks + lane * ks;
  const float* vr = Vs + lane * ks;
  for (int c = 0; c < D; ++c) {
    const float kc = kr[c];
    float vc = 0.0f;
    if (DP) vc = vr[c];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = warp + r * kWarps;
      s[r] += Qs[i * D + c] * kc;
      if (DP) dp[r] += dOs[i * D + c] * vc;
    }
  }
}

template <typename T, int DC>
__global__ void __launch_bounds__(kThreads) forward_kernel(Params p) {
  extern __shared__ float smem[];
  const int D = static_cast<int>(p.D), ks = p.ks;
  float* Qs = smem;             // [kBQ][D] scale * q
  float* Ks = Qs + kBQ * D;     // [kBK][ks]
  float* Vs = Ks + kBK * ks;    // [kBK][ks]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t qb = gridDim.x - 1 - blockIdx.x;  // the longest (last) query tiles start first
  const int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / p.group;
  const int64_t q0 = qb * kBQ;
  const int qn = static_cast<int>(min(int64_t{kBQ}, p.Tq - q0));
  load_tile<T>(p.q, b, q0, qn, h, D, D, p.scale, kBQ, Qs);

  float acc[kRows][DC], m[kRows], l[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < DC; ++c) acc[r][c] = 0.0f;
  }
  const int64_t k_end = min(p.Tk, p.q_offset + q0 + qn);
  for (int64_t k0 = first_key(p, q0); k0 < k_end; k0 += kBK) {
    const int kn = static_cast<int>(min(int64_t{kBK}, k_end - k0));
    if (p.grp != nullptr && !tile_pair_visible(p, b, q0, qn, k0, kn)) continue;  // uniform: p.grp
    __syncthreads();  // the previous tile is consumed
    load_tile<T>(p.k, b, k0, kn, kvh, D, ks, 1.0f, kBK, Ks);
    load_tile<T>(p.v, b, k0, kn, kvh, D, ks, 1.0f, kBK, Vs);
    __syncthreads();
    float s[kRows], unused[kRows];
    tile_scores<false>(Qs, nullptr, Ks, nullptr, D, ks, warp, lane, s, unused);
    float pv[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = warp + r * kWarps;
      pv[r] = 0.0f;
      if (i >= qn) continue;  // uniform across the warp
      const bool vis = lane < kn && visible(p, b, k0 + lane, p.q_offset + q0 + i);
      const float sv = vis ? s[r] : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(sv));
      if (m_new == -INFINITY) continue;  // no visible key yet
      pv[r] = vis ? expf(sv - m_new) : 0.0f;
      const float alpha = expf(m[r] - m_new);  // 0 while m = -inf
      l[r] = l[r] * alpha + warp_sum(pv[r]);
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < DC; ++c) acc[r][c] *= alpha;
    }
    accumulate_tile(acc, pv, Vs, kn, D, ks, lane);
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = warp + r * kWarps;
    if (i >= qn) continue;
    store_cols(row_ptr_mut<T>(p.o, b, q0 + i, h), acc[r], 1.0f / l[r], D, lane);
    if (lane == 0) p.lse[(b * p.Hq + h) * p.Tq + q0 + i] = m[r] + logf(l[r]);
  }
}

// D_i = rowsum(dO * O) per (b, h, i), one warp per row.
template <typename T>
__global__ void __launch_bounds__(kThreads) row_dot_kernel(Params p, int64_t rows) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;  // whole warps exit together
  const int64_t t = r % p.Tq, h = (r / p.Tq) % p.Hq, b = r / (p.Tq * p.Hq);
  const T* g = row_ptr<T>(p.dout, b, t, h);
  const T* o = row_ptr<T>(p.o, b, t, h);
  float s = 0.0f;
  for (int64_t c = lane; c < p.D; c += 32) s += to_f32(g[c]) * to_f32(o[c]);
  s = warp_sum(s);
  if (lane == 0) p.Di[r] = s;
}

template <typename T, int DC>
__global__ void __launch_bounds__(kThreads) backward_kv_kernel(Params p) {
  extern __shared__ float smem[];
  const int D = static_cast<int>(p.D), ks = p.ks;
  constexpr int kPs = kBK + 1;  // row stride of the P / dS tiles
  float* Ks = smem;             // [kBK][ks]
  float* Vs = Ks + kBK * ks;    // [kBK][ks]
  float* Qs = Vs + kBK * ks;    // [kBQ][D] scale * q
  float* dOs = Qs + kBQ * D;    // [kBQ][D]
  float* Ps = dOs + kBQ * D;    // [kBQ][kPs]
  float* dSs = Ps + kBQ * kPs;  // [kBQ][kPs]
  float* Ls = dSs + kBQ * kPs;  // [kBQ] lse
  float* Ds = Ls + kBQ;         // [kBQ] D_i
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z, kvh = blockIdx.y;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kBK;
  const int kn = static_cast<int>(min(int64_t{kBK}, p.Tk - k0));
  load_tile<T>(p.k, b, k0, kn, kvh, D, ks, 1.0f, kBK, Ks);
  load_tile<T>(p.v, b, k0, kn, kvh, D, ks, 1.0f, kBK, Vs);

  float dk[kRows][DC], dv[kRows][DC];  // keys warp + 8r, columns lane + 32c
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int c = 0; c < DC; ++c) dk[r][c] = dv[r][c] = 0.0f;

  // Queries that see some key of [k0, k0 + kn): from the first at or after k0 (causal) to one
  // past the last whose window still holds the tile's last key.
  const int64_t first_q = max(int64_t{0}, k0 - p.q_offset);
  const int64_t end_q =
      p.window > 0 ? min(p.Tq, max(int64_t{0}, k0 + kn - 1 + p.window - p.q_offset)) : p.Tq;
  for (int64_t h = kvh * p.group; h < (kvh + 1) * p.group; ++h) {
    for (int64_t q0 = first_q; q0 < end_q; q0 += kBQ) {
      const int qn = static_cast<int>(min(int64_t{kBQ}, p.Tq - q0));
      if (p.grp != nullptr && !tile_pair_visible(p, b, q0, qn, k0, kn)) continue;
      __syncthreads();  // the previous query tile is consumed (and K/V are loaded)
      load_tile<T>(p.q, b, q0, qn, h, D, D, p.scale, kBQ, Qs);
      load_tile<T>(p.dout, b, q0, qn, h, D, D, 1.0f, kBQ, dOs);
      for (int i = threadIdx.x; i < kBQ; i += blockDim.x) {
        const int64_t row = (b * p.Hq + h) * p.Tq + q0 + i;
        Ls[i] = i < qn ? p.lse[row] : 0.0f;
        Ds[i] = i < qn ? p.Di[row] : 0.0f;
      }
      __syncthreads();
      float s[kRows], dp[kRows];
      tile_scores<true>(Qs, dOs, Ks, Vs, D, ks, warp, lane, s, dp);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int i = warp + r * kWarps;
        const bool vis = i < qn && lane < kn && visible(p, b, k0 + lane, p.q_offset + q0 + i);
        const float pr = vis ? expf(s[r] - Ls[i]) : 0.0f;
        Ps[i * kPs + lane] = pr;
        dSs[i * kPs + lane] = pr * (dp[r] - Ds[i]);
      }
      __syncthreads();
      // dV += P^T dO, dK += dS^T (scale q).
      for (int i = 0; i < qn; ++i) {
        float qc[DC], oc[DC];
        load_cols(Qs + i * D, D, lane, qc);
        load_cols(dOs + i * D, D, lane, oc);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const int j = warp + r * kWarps;
          const float pj = Ps[i * kPs + j], dsj = dSs[i * kPs + j];
#pragma unroll
          for (int c = 0; c < DC; ++c) {
            dv[r][c] += pj * oc[c];
            dk[r][c] += dsj * qc[c];
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int j = warp + r * kWarps;
    if (j >= kn) continue;
    store_cols(row_ptr_mut<T>(p.dk, b, k0 + j, kvh), dk[r], 1.0f, D, lane);
    store_cols(row_ptr_mut<T>(p.dv, b, k0 + j, kvh), dv[r], 1.0f, D, lane);
  }
}

template <typename T, int DC>
__global__ void __launch_bounds__(kThreads) backward_q_kernel(Params p) {
  extern __shared__ float smem[];
  const int D = static_cast<int>(p.D), ks = p.ks;
  float* Qs = smem;             // [kBQ][D] scale * q
  float* dOs = Qs + kBQ * D;    // [kBQ][D]
  float* Ks = dOs + kBQ * D;    // [kBK][ks]
  float* Vs = Ks + kBK * ks;    // [kBK][ks]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t qb = gridDim.x - 1 - blockIdx.x;
  const int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / p.group;
  const int64_t q0 = qb * kBQ;
  const int qn = static_cast<int>(min(int64_t{kBQ}, p.Tq - q0));
  load_tile<T>(p.q, b, q0, qn, h, D, D, p.scale, kBQ, Qs);
  load_tile<T>(p.dout, b, q0, qn, h, D, D, 1.0f, kBQ, dOs);
  float lse[kRows], di[kRows], acc[kRows][DC];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = warp + r * kWarps;
    const int64_t row = (b * p.Hq + h) * p.Tq + q0 + i;
    lse[r] = i < qn ? p.lse[row] : 0.0f;
    di[r] = i < qn ? p.Di[row] : 0.0f;
#pragma unroll
    for (int c = 0; c < DC; ++c) acc[r][c] = 0.0f;
  }
  const int64_t k_end = min(p.Tk, p.q_offset + q0 + qn);
  for (int64_t k0 = first_key(p, q0); k0 < k_end; k0 += kBK) {
    const int kn = static_cast<int>(min(int64_t{kBK}, k_end - k0));
    if (p.grp != nullptr && !tile_pair_visible(p, b, q0, qn, k0, kn)) continue;
    __syncthreads();
    load_tile<T>(p.k, b, k0, kn, kvh, D, ks, 1.0f, kBK, Ks);
    load_tile<T>(p.v, b, k0, kn, kvh, D, ks, 1.0f, kBK, Vs);
    __syncthreads();
    float s[kRows], dp[kRows];
    tile_scores<true>(Qs, dOs, Ks, Vs, D, ks, warp, lane, s, dp);
    float ds[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = warp + r * kWarps;
      const bool vis = i < qn && lane < kn && visible(p, b, k0 + lane, p.q_offset + q0 + i);
      const float pr = vis ? expf(s[r] - lse[r]) : 0.0f;
      ds[r] = pr * (dp[r] - di[r]);
    }
    accumulate_tile(acc, ds, Ks, kn, D, ks, lane);  // dQ += dS K (the scale is applied at the end)
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = warp + r * kWarps;
    if (i >= qn) continue;
    store_cols(row_ptr_mut<T>(p.dq, b, q0 + i, h), acc[r], p.scale, D, lane);
  }
}

// ---- host side ----

BTHD bthd(const Tensor& t) { return {t.defined() ? t.raw_data() : nullptr, t.stride(0), t.stride(1), t.stride(2)}; }

int odd_stride(int64_t D) { return static_cast<int>(D % 2 == 0 ? D + 1 : D); }

size_t forward_smem(int64_t D) { return sizeof(float) * (kBQ * D + 2 * kBK * odd_stride(D)); }
size_t backward_q_smem(int64_t D) { return sizeof(float) * (2 * kBQ * D + 2 * kBK * odd_stride(D)); }
size_t backward_kv_smem(int64_t D) {
  return sizeof(float) * (2 * kBK * odd_stride(D) + 2 * kBQ * D + 2 * kBQ * (kBK + 1) + 2 * kBQ);
}

// Launches kernel with `smem` bytes of dynamic shared memory, opting in above the 48 KiB default.
template <typename Kernel>
void launch(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, const Params& p, const char* op, int device) {
  if (smem > 48 * 1024) {
    int optin = 0;
    ANVIL_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    ANVIL_CHECK(smem <= static_cast<size_t>(optin), op, ": head dim ", p.D, " needs ", smem,
                " bytes of shared memory per block but cuda:", device, " offers ", optin,
                " — use a smaller head dim or bf16 inputs with a head dim cuDNN takes (a multiple of 8)");
    ANVIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  kernel<<<grid, kThreads, smem, stream>>>(p);
  ANVIL_CUDA_CHECK_LAUNCH();
}

// Calls f.template run<T, DC>() for the tensor dtype T and DC = ceil(D / 32) rounded up to a
// power of two (the per-lane column chunks a kernel keeps in registers).
template <typename F>
void dispatch(DType dt, int64_t D, const F& f) {
  with_float_type(dt, [&](auto tag) {
    using T = decltype(tag);
    if (D <= 32) f.template run<T, 1>();
    else if (D <= 64) f.template run<T, 2>();
    else if (D <= 128) f.template run<T, 4>();
    else f.template run<T, 8>();
  });
}

void check_bthd(const Tensor& t, const char* op, const char* name, int device, DType dtype) {
  ANVIL_CHECK(t.defined(), op, ": ", name, " is undefined");
  ANVIL_CHECK(t.device() == Device::cuda(device), op, ": ", name, " is ", t.describe(), " but q is on cuda:", device,
              " — every tensor must be on one device");
  ANVIL_CHECK(t.dim() == 4, op, ": ", name, " must be [B, T, H, D], got ", t.describe());
  ANVIL_CHECK(t.dtype() == dtype, op, ": ", name, " is ", t.describe(), " but must be ", dtype_name(dtype),
              " like q (f32 or bf16) — convert it with .to(dtype)");
  ANVIL_CHECK(t.stride(3) == 1 || t.size(3) <= 1, op, ": the last dim of ", name, " ", t.describe(),
              " must be contiguous (stride 1), got stride ", t.stride(3));
}

// Allocates an undefined output like q (shape, dtype, device), otherwise checks it.
void prepare_output(Tensor& t, const Shape& shape, const char* op, const char* name, int device, DType dtype) {
  if (!t.defined()) t = Tensor::empty(shape, dtype, Device::cuda(device));
  check_bthd(t, op, name, device, dtype);
  ANVIL_CHECK(t.shape() == shape, op, ": ", name, " ", t.describe(), " must have shape ", shape_str(shape));
}

AttentionDims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int64_t q_offset,
                           const kernels::AttentionMask& mask, const char* op) {
  const int device = detail::device_index(op, "q", q);
  ANVIL_CHECK(q.dtype() == DType::F32 || q.dtype() == DType::BF16, op, ": q is ", q.describe(),
              " but CUDA attention takes f32 or bf16");
  check_bthd(q, op, "q", device, q.dtype());
  check_bthd(k, op, "k", device, q.dtype());
  check_bthd(v, op, "v", device, q.dtype());
  const AttentionDims d{kernels::attention_dims(op, q, k, v, scale, q_offset, mask.window), device};
  if (mask.segment_ids.defined())
    ANVIL_CHECK(mask.segment_ids.device() == Device::cuda(device) && mask.segment_ids.dtype() == DType::I32 &&
                    mask.segment_ids.is_contiguous() && mask.segment_ids.shape() == Shape({d.B, d.Tk}),
                op, ": segment_ids must be contiguous i32 [B, Tk] = ", shape_str({d.B, d.Tk}), " on cuda:", device,
                ", got ", mask.segment_ids.describe(), " — move them to q's device with .to(Device)");
  if (mask.group_ids.defined())
    ANVIL_CHECK(mask.group_ids.device() == Device::cuda(device) && mask.group_ids.dtype() == DType::I32 &&
                    mask.group_ids.is_contiguous() && mask.group_ids.shape() == Shape({d.B, d.Tk}),
                op, ": group_ids must be contiguous i32 [B, Tk] = ", shape_str({d.B, d.Tk}), " on cuda:", device,
                ", got ", mask.group_ids.describe(), " — move them to q's device with .to(Device)");
  ANVIL_CHECK(d.D <= kMaxHeadDim, op, ": head dim ", d.D, " is above the ", kMaxHeadDim,
              " the CUDA attention kernels take (q ", q.describe(), ")");
  ANVIL_CHECK(d.B <= 65535 && d.Hq <= 65535, op, ": batch ", d.B, " or heads ", d.Hq,
              " above 65535 exceed the CUDA grid — split the batch");
  return d;
}

void check_lse(const Tensor& lse, const AttentionDims& d, const char* op) {
  ANVIL_CHECK(lse.device() == Device::cuda(d.device) && lse.dtype() == DType::F32 && lse.is_contiguous() &&
                  lse.shape() == Shape({d.B, d.Hq, d.Tq}),
              op, ": lse must be contiguous f32 [B, Hq, Tq] = ", shape_str({d.B, d.Hq, d.Tq}), " on cuda:", d.device,
              ", got ", lse.describe());
}

Params params_of(const AttentionDims& d, const kernels::AttentionMask& mask) {
  Params p{};
  p.seg = mask.segment_ids.defined() ? mask.segment_ids.data<int32_t>() : nullptr;
  p.grp = mask.group_ids.defined() ? mask.group_ids.data<int32_t>() : nullptr;
  p.Tq = d.Tq, p.Tk = d.Tk, p.Hq = d.Hq, p.Hkv = d.Hkv, p.D = d.D, p.group = d.group;
  p.q_offset = d.q_offset, p.window = d.window, p.scale = d.scale;
  p.ks = odd_stride(d.D);
  return p;
}

int64_t tiles(int64_t n, int64_t t) { return (n + t - 1) / t; }

// A mask read per row (documents or drafting groups), which cuDNN's graph here does not take.
bool has_row_mask(const kernels::AttentionMask& mask) {
  return mask.segment_ids.defined() || mask.group_ids.defined();
}

struct ForwardLaunch {
  const Params& p;
  const AttentionDims& d;
  cudaStream_t stream;
  template <typename T, int DC>
  void run() const {
    const dim3 grid(static_cast<unsigned>(tiles(d.Tq, kBQ)), static_cast<unsigned>(d.Hq), static_cast<unsigned>(d.B));
    launch(forward_kernel<T, DC>, grid, forward_smem(d.D), stream, p, "attention_forward", d.device);
  }
};

struct BackwardLaunch {
  const Params& p;
  const AttentionDims& d;
  cudaStream_t stream;
  template <typename T, int DC>
  void run() const {
    const char* op = "attention_backward";
    const int64_t rows = d.B * d.Hq * d.Tq;
    if (rows > 0) {
      row_dot_kernel<T><<<static_cast<unsigned>(tiles(rows, kWarps)), kThreads, 0, stream>>>(p, rows);
      ANVIL_CUDA_CHECK_LAUNCH();
    }
    launch(backward_kv_kernel<T, DC>,
           dim3(static_cast<unsigned>(tiles(d.Tk, kBK)), static_cast<unsigned>(d.Hkv), static_cast<unsigned>(d.B)),
           backward_kv_smem(d.D), stream, p, op, d.device);
    if (rows > 0)
      launch(backward_q_kernel<T, DC>,
             dim3(static_cast<unsigned>(tiles(d.Tq, kBQ)), static_cast<unsigned>(d.Hq), static_cast<unsigned>(d.B)),
             backward_q_smem(d.D), stream, p, op, d.device);
  }
};

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int64_t q_offset, Tensor& out,
                       Tensor& lse, const kernels::AttentionMask& mask) {
  const char* op = "attention_forward";
  const AttentionDims d = check_inputs(q, k, v, scale, q_offset, mask, op);
  prepare_output(out, q.shape(), op, "out", d.device, q.dtype());
  if (!lse.defined()) lse = Tensor::empty({d.B, d.Hq, d.Tq}, DType::F32, Device::cuda(d.device));
  check_lse(lse, d, op);
  if (d.B == 0 || d.Tq == 0 || d.Hq == 0 || d.D == 0) return;
  anvil::cuda::DeviceGuard guard(d.device);
  cudaStream_t stream = anvil::cuda::current_stream(d.device);
  // cuDNN's SDPA graph here has no per-row document or group mask: those take the kernels below.
  if (!has_row_mask(mask) && detail::cudnn_attention_forward(d, q, k, v, out, lse, stream)) return;

  Params p = params_of(d, mask);
  p.q = bthd(q), p.k = bthd(k), p.v = bthd(v), p.o = bthd(out);
  p.lse = lse.data<float>();
  dispatch(q.dtype(), d.D, ForwardLaunch{p, d, stream});
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, float scale, int64_t q_offset, Tensor& dq, Tensor& dk, Tensor& dv,
                        const kernels::AttentionMask& mask) {
  const char* op = "attention_backward";
  const AttentionDims d = check_inputs(q, k, v, scale, q_offset, mask, op);
  check_bthd(dout, op, "dout", d.device, q.dtype());
  check_bthd(out, op, "out", d.device, q.dtype());
  ANVIL_CHECK(dout.shape() == q.shape() && out.shape() == q.shape(), op, ": dout ", dout.describe(), " and out ",
              out.describe(), " must have the shape of q ", q.describe());
  ANVIL_CHECK(lse.defined(), op, ": lse is undefined — pass the lse attention_forward wrote");
  check_lse(lse, d, op);
  prepare_output(dq, q.shape(), op, "dq", d.device, q.dtype());
  prepare_output(dk, k.shape(), op, "dk", d.device, q.dtype());
  prepare_output(dv, v.shape(), op, "dv", d.device, q.dtype());
  if (d.B == 0 || d.D == 0 || d.Tk == 0) return;  // nothing to write (Hq = 0 or Tq = 0 still zeroes dk, dv)
  anvil::cuda::DeviceGuard guard(d.device);
  cudaStream_t stream = anvil::cuda::current_stream(d.device);
  if (!has_row_mask(mask) && d.Tq > 0 && d.Hq > 0 &&
      detail::cudnn_attention_backward(d, dout, q, k, v, out, lse, dq, dk, dv, stream))
    return;

  Params p = params_of(d, mask);
  p.q = bthd(q), p.k = bthd(k), p.v = bthd(v), p.o = bthd(out), p.dout = bthd(dout);
  p.dq = bthd(dq), p.dk = bthd(dk), p.dv = bthd(dv);
  p.lse = const_cast<float*>(lse.data<float>());
  const int64_t rows = d.B * d.Hq * d.Tq;
  Tensor Di = Tensor::empty({std::max<int64_t>(rows, 1)}, DType::F32, Device::cuda(d.device));
  p.Di = Di.data<float>();
  dispatch(q.dtype(), d.D, BackwardLaunch{p, d, stream});
}

}  // namespace anvil::kernels::cuda
