// Tree attention on the CPU (kernels/tree_attention.h): a plain two-pass softmax per query and
// head — tree verification scores a few dozen nodes over one prefix, so the blockwise kernel of
// attention.cpp is not needed here.
#include "kernels/tree_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/backend.h"

namespace anvil::kernels {

namespace {

void check_bthd(const Tensor& t, const char* name, const Tensor& q) {
  const char* op = "tree_attention_forward";
  ANVIL_CHECK(t.device() == q.device(), op, ": ", name, " is ", t.describe(), " but q is ", q.describe(),
              " — every tensor must be on one device");
  ANVIL_CHECK(t.dim() == 4 && t.dtype() == DType::F32, op, ": ", name, " must be f32 [B, T, H, D] on the CPU, got ",
              t.describe());
  ANVIL_CHECK(t.stride(3) == 1 || t.size(3) <= 1, op, ": the last dim of ", name, " ", t.describe(),
              " must be contiguous");
}

}  // namespace

void tree_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, float scale, int64_t prefix,
                            const Tensor& visible, Tensor& out) {
  ANVIL_DISPATCH_CUDA(q, tree_attention_forward, q, k, v, scale, prefix, visible, out);
  const char* op = "tree_attention_forward";
  check_bthd(q, "q", q);
  check_bthd(k, "k", q);
  check_bthd(v, "v", q);
  check_bthd(out, "out", q);
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Tk = k.size(1), Hkv = k.size(2);
  ANVIL_CHECK(k.size(0) == B && k.size(3) == D && v.shape() == k.shape() && Hkv >= 1 && Hq % Hkv == 0, op, ": k ",
              k.describe(), " and v ", v.describe(), " do not fit q ", q.describe(), " (same B and D, Hq % Hkv == 0)");
  ANVIL_CHECK(out.shape() == q.shape(), op, ": out ", out.describe(), " must have the shape of q ", q.describe());
  ANVIL_CHECK(prefix >= 0 && prefix + T <= Tk, op, ": the prefix of ", prefix, " slots and ", T,
              " tree nodes need ", prefix + T, " key slots, k has ", Tk);
  ANVIL_CHECK(visible.device().is_cpu() && visible.dtype() == DType::I32 && visible.is_contiguous() &&
                  visible.shape() == Shape({T, T}),
              op, ": visible must be contiguous i32 [T, T] = [", T, ", ", T, "] on q's device, got ", visible.describe(),
              " — the tree's ancestor-or-self mask");
  const int32_t* vis = visible.data<int32_t>();
  for (int64_t i = 0; i < T; ++i)
    ANVIL_CHECK(vis[i * T + i] != 0, op, ": visible[", i, ", ", i, "] is 0 — a tree node always sees itself");
  const int64_t group = Hq / Hkv;
  const float *Q = q.data<float>(), *K = k.data<float>(), *V = v.data<float>();
  float* O = out.data<float>();
#pragma omp parallel for collapse(2) schedule(static) if (B * T * Hq > 16)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T; ++i) {
      std::vector<float> s(static_cast<size_t>(prefix + T));
      std::vector<double> acc(static_cast<size_t>(D));
      for (int64_t h = 0; h < Hq; ++h) {
        const float* qi = Q + b * q.stride(0) + i * q.stride(1) + h * q.stride(2);
        const int64_t kvh = h / group;
        auto key = [&](int64_t j) { return K + b * k.stride(0) + j * k.stride(1) + kvh * k.stride(2); };
        auto val = [&](int64_t j) { return V + b * v.stride(0) + j * v.stride(1) + kvh * v.stride(2); };
        auto seen = [&](int64_t j) { return j < prefix || vis[i * T + (j - prefix)] != 0; };
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < prefix + T; ++j) {
          if (!seen(j)) continue;
          const float* kj = key(j);
          float dot = 0;
          for (int64_t c = 0; c < D; ++c) dot += qi[c] * kj[c];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < prefix + T; ++j) {
          if (!seen(j)) continue;
          const double w = std::exp(static_cast<double>(s[j] - mx));
          sum += w;
          const float* vj = val(j);
          for (int64_t c = 0; c < D; ++c) acc[c] += w * vj[c];
        }
        float* oi = O + b * out.stride(0) + i * out.stride(1) + h * out.stride(2);
        for (int64_t c = 0; c < D; ++c) oi[c] = static_cast<float>(acc[c] / sum);
      }
    }
}

}  // namespace anvil::kernels
