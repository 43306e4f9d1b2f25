// kernels/attention on CUDA against the CPU backend on the same inputs, forward and backward:
// the cuDNN path (bf16, head_dim 64 and 128) and the fallback kernel (f32 anywhere; bf16 with
// a head_dim cuDNN does not take), with grouped-query heads, q_offset (queries that continue a
// KV prefix), sliding windows, and q/k/v (and dq/dk/dv) as strided views into one fused buffer.
//
// The backward of both sides runs on the GPU forward's own out and lse, so its comparison
// measures the backward alone. Error measure and base tolerances: tests/support/gpu_check.h.
//
// Which path ran is checked too (kernels/cuda/attention_internal.h counts cuDNN's runs): a
// graph cuDNN refuses silently takes the fallback kernel, and a "cudnn_" case would then pass
// while testing the fallback twice and cuDNN never. "fallback_" cases must not reach cuDNN.
// CTest runs this binary a second time with ANVIL_CUDNN_ATTENTION=0 (every case on the fallback).
// "_docs" cases pack several documents per row (AttentionMask::segment_ids): always the fallback.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <string>

#include "kernels/attention.h"
#include "kernels/cuda/attention_internal.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

struct AttnCase {
  const char* name;  // "cudnn_...": must run on cuDNN while it is on; "fallback_...": never
  int64_t B, Tq, Tk, Hq, Hkv, D;
  DType dtype;
  bool fused;             // q/k/v (and dq/dk/dv) are views into one [B, Tk, (Hq + 2 Hkv) * D + pad] buffer
  int64_t window = 0;     // sliding window; 0 = none
  int64_t q_offset = -1;  // -1: Tk - Tq (the queries are the last Tq positions)
  int64_t pad = 0;        // fused: extra elements per row of the buffer (4 misaligns bf16 rows for cuDNN)
  bool documents = false; // packed rows: documents of 1 .. 64 slots (segment_ids), else one per row
};

// i32 [B, Tk] segment ids: per row, documents cycling through lengths that include 1 and
// cross the kernels' 32/64-slot tiles; undefined without documents.
Tensor segment_ids_of(const AttnCase& c) {
  if (!c.documents) return Tensor();
  const int64_t lengths[] = {1, 17, 1, 40, 9, 64, 3};
  Tensor seg = Tensor::empty({c.B, c.Tk}, DType::I32);
  for (int64_t b = 0; b < c.B; ++b) {
    int64_t doc = 0, left = lengths[b % 7];
    for (int64_t j = 0; j < c.Tk; ++j) {
      if (left == 0) left = lengths[(b + ++doc) % 7];
      seg.data<int32_t>()[b * c.Tk + j] = static_cast<int32_t>(doc);
      --left;
    }
  }
  return seg;
}

int64_t q_offset_of(const AttnCase& c) { return c.q_offset < 0 ? c.Tk - c.Tq : c.q_offset; }
int64_t row_width(const AttnCase& c) { return (c.Hq + 2 * c.Hkv) * c.D + c.pad; }

std::ostream& operator<<(std::ostream& os, const AttnCase& c) { return os << c.name; }

struct Qkv {
  Tensor buffer;  // the fused buffer when fused (undefined otherwise)
  Tensor q, k, v;
};

// Views q, k, v of one fused [B, Tk, row_width] buffer the way a fused qkv projection lays
// them out; with Tq < Tk the queries are positions [q_offset, q_offset + Tq).
Qkv split_fused(const Tensor& buf, const AttnCase& c) {
  const int64_t W = row_width(c);
  auto heads = [&](int64_t t0, int64_t T, int64_t h0, int64_t H) {
    return buf.as_strided({c.B, T, H, c.D}, {c.Tk * W, W, c.D, 1}, buf.offset() + t0 * W + h0 * c.D);
  };
  return {buf, heads(q_offset_of(c), c.Tq, 0, c.Hq), heads(0, c.Tk, c.Hq, c.Hkv),
          heads(0, c.Tk, c.Hq + c.Hkv, c.Hkv)};
}

// CPU inputs (f32, bf16-exact when the case is bf16).
Qkv make_inputs(const AttnCase& c) {
  if (c.fused)
    return split_fused(reference_input(random_tensor({c.B, c.Tk, row_width(c)}, 31, -2, 2), c.dtype), c);
  return {Tensor(), reference_input(random_tensor({c.B, c.Tq, c.Hq, c.D}, 32, -2, 2), c.dtype),
          reference_input(random_tensor({c.B, c.Tk, c.Hkv, c.D}, 33, -2, 2), c.dtype),
          reference_input(random_tensor({c.B, c.Tk, c.Hkv, c.D}, 34, -1, 1), c.dtype)};
}

// The same tensors on the GPU in the case's dtype, with the same views.
Qkv to_gpu(const Qkv& in, const AttnCase& c) {
  if (c.fused) return split_fused(gpu_operand(in.buffer, c.dtype), c);
  return {Tensor(), gpu_operand(in.q, c.dtype), gpu_operand(in.k, c.dtype), gpu_operand(in.v, c.dtype)};
}

// A tensor of NaN: what a kernel leaves unwritten then fails the comparison.
Tensor nan_tensor(const Shape& shape, DType dtype, Device device) {
  Tensor t = Tensor::empty(shape, dtype, device);
  t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

// Gradient destinations shaped like the inputs (views into one buffer when fused), NaN where
// the kernel must write.
Qkv empty_grads(const AttnCase& c, DType dtype, Device device) {
  if (c.fused) {
    Tensor buf = Tensor::empty({c.B, c.Tk, row_width(c)}, dtype, device);
    buf.zero_();  // rows outside the queries and the padding get no gradient; keep them defined on both sides
    return split_fused(buf, c);
  }
  return {Tensor(), nan_tensor({c.B, c.Tq, c.Hq, c.D}, dtype, device),
          nan_tensor({c.B, c.Tk, c.Hkv, c.D}, dtype, device), nan_tensor({c.B, c.Tk, c.Hkv, c.D}, dtype, device)};
}

namespace detail = anvil::kernels::cuda::detail;

// The cuDNN runs (forward, backward) a case must add: 1 each for a "cudnn_" case while cuDNN is
// on, else none.
void expect_path(const AttnCase& c, const detail::CudnnAttentionRuns& before, const detail::CudnnAttentionRuns& after,
                 bool backward_ran) {
  const bool want = std::strncmp(c.name, "cudnn_", 6) == 0 && detail::cudnn_attention_enabled();
  EXPECT_EQ(after.forward - before.forward, want ? 1 : 0)
      << c.name << ": the forward " << (want ? "did not run on cuDNN (it refused the graph?)" : "ran on cuDNN")
      << " — see kernels/cuda/attention_cudnn.cpp";
  if (backward_ran)
    EXPECT_EQ(after.backward - before.backward, want ? 1 : 0)
        << c.name << ": the backward " << (want ? "did not run on cuDNN (it refused the graph?)" : "ran on cuDNN")
        << " — see kernels/cuda/attention_cudnn.cpp";
}

class AttentionGpu : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionGpu, ForwardAndBackwardMatchCpu) {
  const AttnCase& c = GetParam();
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  const int64_t q_offset = q_offset_of(c);
  const bool bf16 = c.dtype == DType::BF16;
  const detail::CudnnAttentionRuns before = detail::cudnn_attention_runs();
  const Tensor seg = segment_ids_of(c);
  const kernels::AttentionMask mask_cpu{c.window, seg, Tensor()};
  const kernels::AttentionMask mask_gpu{c.window, seg.defined() ? seg.to(gpu()) : Tensor(), Tensor()};

  // Forward.
  const Qkv in = make_inputs(c);
  Tensor out_cpu = Tensor::empty({c.B, c.Tq, c.Hq, c.D}), lse_cpu = Tensor::empty({c.B, c.Hq, c.Tq});
  kernels::attention_forward(in.q, in.k, in.v, scale, q_offset, out_cpu, lse_cpu, mask_cpu);

  const Qkv g = to_gpu(in, c);
  Tensor out_gpu = nan_tensor({c.B, c.Tq, c.Hq, c.D}, c.dtype, gpu());
  Tensor lse_gpu = nan_tensor({c.B, c.Hq, c.Tq}, DType::F32, gpu());
  kernels::attention_forward(g.q, g.k, g.v, scale, q_offset, out_gpu, lse_gpu, mask_gpu);

  // bf16 (flash attention): out is rounded once on output and the probabilities once before
  // P @ V, 2^-8 each, plus a margin of one more for the online-softmax rescaling; lse is f32
  // from bf16-exact q, k, but computed through exp2 with log2(e) folded into the scale, 1e-4.
  const double out_tol = bf16 ? 3 * kBf16Rounding : kF32Tol;
  const double lse_tol = bf16 ? 1e-4 : kF32Tol;
  EXPECT_GPU_NEAR(out_gpu, out_cpu, out_tol, "out");
  EXPECT_GPU_NEAR(lse_gpu, lse_cpu, lse_tol, "lse");

  // Backward, both sides from the GPU's out and lse.
  const Tensor dout = reference_input(random_tensor({c.B, c.Tq, c.Hq, c.D}, 35), c.dtype);
  const Tensor out_ref = host_f32(out_gpu), lse_ref = lse_gpu.to(Device::cpu());
  Qkv d_cpu = empty_grads(c, DType::F32, Device::cpu());
  kernels::attention_backward(dout, in.q, in.k, in.v, out_ref, lse_ref, scale, q_offset, d_cpu.q, d_cpu.k, d_cpu.v,
                              mask_cpu);
  Qkv d_gpu = empty_grads(c, c.dtype, gpu());
  kernels::attention_backward(gpu_operand(dout, c.dtype), g.q, g.k, g.v, out_gpu, lse_gpu, scale, q_offset, d_gpu.q,
                              d_gpu.k, d_gpu.v, mask_gpu);
  // bf16: P and dS = P * (dP - rowsum(dO * O)) are rounded to bf16 before the products that
  // make dV, dK and dQ, and each gradient is rounded on output: 2^-8 each, one more as margin.
  const double grad_tol = bf16 ? 4 * kBf16Rounding : kF32Tol;
  EXPECT_GPU_NEAR(d_gpu.q, d_cpu.q, grad_tol, "dq");
  EXPECT_GPU_NEAR(d_gpu.k, d_cpu.k, grad_tol, "dk");
  EXPECT_GPU_NEAR(d_gpu.v, d_cpu.v, grad_tol, "dv");
  if (c.fused) {  // the whole fused gradient buffer, so a write outside the views shows too
    EXPECT_GPU_NEAR(d_gpu.buffer, d_cpu.buffer, grad_tol, "fused dqkv buffer");
  }
  expect_path(c, before, detail::cudnn_attention_runs(), true);
}

constexpr DType F32 = DType::F32, BF16 = DType::BF16;

const AttnCase kCases[] = {
    // cuDNN (bf16, head_dim 64 / 128)
    {"cudnn_d64_gqa", 2, 128, 128, 8, 2, 64, BF16, false},
    {"cudnn_d128_mha", 1, 256, 256, 4, 4, 128, BF16, false},
    {"cudnn_d64_fused_views", 2, 96, 96, 4, 2, 64, BF16, true},
    {"cudnn_d128_q_offset", 1, 64, 192, 4, 1, 128, BF16, false},
    {"cudnn_d64_window", 1, 160, 160, 4, 2, 64, BF16, false, 48},
    {"cudnn_d64_fused_q_offset_window", 2, 40, 120, 6, 3, 64, BF16, true, 64},
    {"cudnn_d64_odd_length", 3, 77, 77, 2, 1, 64, BF16, false},
    // fallback kernel: f32, and head dims cuDNN does not take
    {"fallback_f32_d64", 2, 64, 64, 4, 2, 64, F32, false},
    {"fallback_f32_d37_odd", 2, 33, 33, 6, 3, 37, F32, false},
    {"fallback_f32_d20_fused_q_offset", 2, 17, 50, 4, 2, 20, F32, true},
    {"fallback_f32_window", 1, 70, 70, 4, 4, 32, F32, false, 7},
    {"fallback_f32_decode_one_query", 2, 1, 45, 8, 2, 16, F32, false},
    {"fallback_f32_fused_window_q_offset", 1, 30, 64, 4, 2, 24, F32, true, 20},
    {"fallback_bf16_d20", 2, 48, 48, 4, 2, 20, BF16, false},
    {"fallback_bf16_d36_fused_window", 1, 64, 64, 2, 1, 36, BF16, true, 16},
    // head dims cuDNN would take, on the fallback: a bf16 row stride that is not 16-byte aligned
    // (pad 4), q_offset neither 0 nor Tk - Tq, a one-query decode step; head dims 96..256 take the kernels' wider
    // register tiles and more than 48 KiB of shared memory (the opt-in)
    {"fallback_bf16_d64_fused_unaligned_rows", 2, 80, 80, 4, 2, 64, BF16, true, 0, -1, 4},
    {"fallback_bf16_d128_middle_q_offset", 1, 48, 160, 4, 2, 128, BF16, false, 0, 70},
    {"fallback_bf16_d64_decode_one_query", 2, 1, 45, 8, 2, 64, BF16, false},  // a new Tk every step: no graph
    {"fallback_f32_d96_fused_middle_q_offset", 2, 37, 90, 6, 2, 96, F32, true, 0, 20},
    {"fallback_f32_d256_window_middle_q_offset", 1, 40, 100, 4, 2, 256, F32, false, 24, 30},
    // packed documents: shapes cuDNN would take otherwise, windows, q_offset, fused views, GQA
    {"fallback_docs_bf16_d64_gqa", 2, 128, 128, 8, 2, 64, BF16, false, 0, -1, 0, true},
    {"fallback_docs_bf16_d64_fused_window", 3, 150, 150, 4, 2, 64, BF16, true, 20, -1, 0, true},
    {"fallback_docs_f32_d32_q_offset", 2, 40, 130, 4, 1, 32, F32, false, 0, -1, 0, true},
    {"fallback_docs_f32_d20_window_decode", 2, 1, 90, 4, 2, 20, F32, false, 30, -1, 0, true},
    {"fallback_docs_bf16_d128_mha", 1, 200, 200, 4, 4, 128, BF16, false, 0, -1, 0, true},
};

INSTANTIATE_TEST_SUITE_P(Cases, AttentionGpu, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<AttnCase>& i) { return std::string(i.param.name); });

// A long causal sequence at a training-like shape, on the cuDNN path: the online softmax and
// the kernel's tiling see many key blocks per query block.
TEST(AttentionGpuLong, CudnnTrainingShapeMatchesCpu) {
  const AttnCase c{"cudnn_long", 1, 1024, 1024, 4, 2, 64, BF16, true};
  const float scale = 0.125f;
  const detail::CudnnAttentionRuns before = detail::cudnn_attention_runs();
  const Qkv in = make_inputs(c);
  Tensor out_cpu = Tensor::empty({c.B, c.Tq, c.Hq, c.D}), lse_cpu = Tensor::empty({c.B, c.Hq, c.Tq});
  kernels::attention_forward(in.q, in.k, in.v, scale, 0, out_cpu, lse_cpu);
  const Qkv g = to_gpu(in, c);
  Tensor out_gpu = Tensor::empty({c.B, c.Tq, c.Hq, c.D}, BF16, gpu());
  Tensor lse_gpu = Tensor::empty({c.B, c.Hq, c.Tq}, F32, gpu());
  kernels::attention_forward(g.q, g.k, g.v, scale, 0, out_gpu, lse_gpu);
  EXPECT_GPU_NEAR(out_gpu, out_cpu, 3 * kBf16Rounding, "out");
  EXPECT_GPU_NEAR(lse_gpu, lse_cpu, 1e-4, "lse");
  expect_path(c, before, detail::cudnn_attention_runs(), false);
}

}  // namespace
