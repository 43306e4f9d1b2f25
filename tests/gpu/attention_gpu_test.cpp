// kernels/attention on CUDA against the CPU backend on the same inputs, forward and backward:
// the cuDNN path (bf16, head_dim 64 and 128) and the fallback kernel (f32 anywhere; bf16 with
// a head_dim cuDNN does not take), with grouped-query heads, q_offset (queries that continue a
// KV prefix), sliding windows, and q/k/v (and dq/dk/dv) as strided views into one fused buffer.
//
// The backward of both sides runs on the GPU forward's own out and lse, so its comparison
// measures the backward alone. Error measure and base tolerances: tests/support/gpu_check.h.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>

#include "kernels/attention.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

struct AttnCase {
  const char* name;
  int64_t B, Tq, Tk, Hq, Hkv, D;
  DType dtype;
  bool fused;          // q/k/v (and dq/dk/dv) are views into one [B, Tk, (Hq + 2 Hkv) * D] buffer
  int64_t window = 0;  // sliding window; 0 = none
};

std::ostream& operator<<(std::ostream& os, const AttnCase& c) { return os << c.name; }

struct Qkv {
  Tensor buffer;  // the fused buffer when fused (undefined otherwise)
  Tensor q, k, v;
};

// Views q, k, v of one fused buffer the way a fused qkv projection lays them out; with
// Tq < Tk the queries are the last Tq positions (q_offset = Tk - Tq).
Qkv split_fused(const Tensor& buf, const AttnCase& c) {
  const Tensor h = buf.view({c.B, c.Tk, c.Hq + 2 * c.Hkv, c.D});
  return {buf, h.slice(2, 0, c.Hq).slice(1, c.Tk - c.Tq, c.Tk), h.slice(2, c.Hq, c.Hq + c.Hkv),
          h.slice(2, c.Hq + c.Hkv, c.Hq + 2 * c.Hkv)};
}

// CPU inputs (f32, bf16-exact when the case is bf16).
Qkv make_inputs(const AttnCase& c) {
  if (c.fused)
    return split_fused(reference_input(random_tensor({c.B, c.Tk, (c.Hq + 2 * c.Hkv) * c.D}, 31, -2, 2), c.dtype), c);
  return {Tensor(), reference_input(random_tensor({c.B, c.Tq, c.Hq, c.D}, 32, -2, 2), c.dtype),
          reference_input(random_tensor({c.B, c.Tk, c.Hkv, c.D}, 33, -2, 2), c.dtype),
          reference_input(random_tensor({c.B, c.Tk, c.Hkv, c.D}, 34, -1, 1), c.dtype)};
}

// The same tensors on the GPU in the case's dtype, with the same views.
Qkv to_gpu(const Qkv& in, const AttnCase& c) {
  if (c.fused) return split_fused(gpu_operand(in.buffer, c.dtype), c);
  return {Tensor(), gpu_operand(in.q, c.dtype), gpu_operand(in.k, c.dtype), gpu_operand(in.v, c.dtype)};
}

// Empty gradient destinations shaped like the inputs (views into one buffer when fused).
Qkv empty_grads(const AttnCase& c, DType dtype, Device device) {
  if (c.fused) {
    Tensor buf = Tensor::empty({c.B, c.Tk, (c.Hq + 2 * c.Hkv) * c.D}, dtype, device);
    buf.zero_();  // the rows before q_offset get no dq; keep them defined on both sides
    return split_fused(buf, c);
  }
  return {Tensor(), Tensor::empty({c.B, c.Tq, c.Hq, c.D}, dtype, device),
          Tensor::empty({c.B, c.Tk, c.Hkv, c.D}, dtype, device), Tensor::empty({c.B, c.Tk, c.Hkv, c.D}, dtype, device)};
}

class AttentionGpu : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionGpu, ForwardAndBackwardMatchCpu) {
  const AttnCase& c = GetParam();
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  const int64_t q_offset = c.Tk - c.Tq;
  const bool bf16 = c.dtype == DType::BF16;

  // Forward.
  const Qkv in = make_inputs(c);
  Tensor out_cpu = Tensor::empty({c.B, c.Tq, c.Hq, c.D}), lse_cpu = Tensor::empty({c.B, c.Hq, c.Tq});
  kernels::attention_forward(in.q, in.k, in.v, scale, q_offset, out_cpu, lse_cpu, c.window);

  const Qkv g = to_gpu(in, c);
  Tensor out_gpu = Tensor::empty({c.B, c.Tq, c.Hq, c.D}, c.dtype, gpu());
  Tensor lse_gpu = Tensor::empty({c.B, c.Hq, c.Tq}, DType::F32, gpu());
  kernels::attention_forward(g.q, g.k, g.v, scale, q_offset, out_gpu, lse_gpu, c.window);

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
                              c.window);
  Qkv d_gpu = empty_grads(c, c.dtype, gpu());
  kernels::attention_backward(gpu_operand(dout, c.dtype), g.q, g.k, g.v, out_gpu, lse_gpu, scale, q_offset, d_gpu.q,
                              d_gpu.k, d_gpu.v, c.window);
  // bf16: P and dS = P * (dP - rowsum(dO * O)) are rounded to bf16 before the products that
  // make dV, dK and dQ, and each gradient is rounded on output: 2^-8 each, one more as margin.
  const double grad_tol = bf16 ? 4 * kBf16Rounding : kF32Tol;
  EXPECT_GPU_NEAR(d_gpu.q, d_cpu.q, grad_tol, "dq");
  EXPECT_GPU_NEAR(d_gpu.k, d_cpu.k, grad_tol, "dk");
  EXPECT_GPU_NEAR(d_gpu.v, d_cpu.v, grad_tol, "dv");
  if (c.fused) {  // the whole fused gradient buffer, so a write outside the views shows too
    EXPECT_GPU_NEAR(d_gpu.buffer, d_cpu.buffer, grad_tol, "fused dqkv buffer");
  }
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
};

INSTANTIATE_TEST_SUITE_P(Cases, AttentionGpu, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<AttnCase>& i) { return std::string(i.param.name); });

// A long causal sequence at a training-like shape, on the cuDNN path: the online softmax and
// the kernel's tiling see many key blocks per query block.
TEST(AttentionGpuLong, CudnnTrainingShapeMatchesCpu) {
  const AttnCase c{"long", 1, 1024, 1024, 4, 2, 64, BF16, true};
  const float scale = 0.125f;
  const Qkv in = make_inputs(c);
  Tensor out_cpu = Tensor::empty({c.B, c.Tq, c.Hq, c.D}), lse_cpu = Tensor::empty({c.B, c.Hq, c.Tq});
  kernels::attention_forward(in.q, in.k, in.v, scale, 0, out_cpu, lse_cpu);
  const Qkv g = to_gpu(in, c);
  Tensor out_gpu = Tensor::empty({c.B, c.Tq, c.Hq, c.D}, BF16, gpu());
  Tensor lse_gpu = Tensor::empty({c.B, c.Hq, c.Tq}, F32, gpu());
  kernels::attention_forward(g.q, g.k, g.v, scale, 0, out_gpu, lse_gpu);
  EXPECT_GPU_NEAR(out_gpu, out_cpu, 3 * kBf16Rounding, "out");
  EXPECT_GPU_NEAR(lse_gpu, lse_cpu, 1e-4, "lse");
}

}  // namespace
