// kernels/norm, activation and rope on CUDA against the CPU backend on the same inputs, in
// f32 and bf16 (activations and weights bf16, saved statistics and parameter gradients f32,
// as kernels/cuda/ops.h states), forward and backward, with row-strided views and the in-place
// forms the models use. Parameter gradients start non-zero: they must accumulate.
// Error measure and base tolerances: tests/support/gpu_check.h.
#include <gtest/gtest.h>

#include <ostream>
#include <string>

#include "kernels/activation.h"
#include "kernels/norm.h"
#include "kernels/rope.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr DType F32 = DType::F32, BF16 = DType::BF16;

// A bf16 output is its f32 value rounded once; an f32 output from bf16-exact inputs differs
// only by the order of f32 operations.
double activation_tol(DType dt) { return dt == BF16 ? kBf16Rounding + kF32Tol : kF32Tol; }

struct NormCase {
  const char* name;
  int64_t rows, C;
  DType dtype;
  int64_t pad;  // x, dy as views into [rows, C + pad] buffers
};
std::ostream& operator<<(std::ostream& os, const NormCase& c) { return os << c.name; }

// [rows, C] operand, optionally the first C columns of a wider buffer; returns {cpu, gpu}.
std::pair<Tensor, Tensor> operand(const NormCase& c, uint32_t stream, float lo = -2, float hi = 2) {
  const Tensor wide = reference_input(random_tensor({c.rows, c.C + c.pad}, stream, lo, hi), c.dtype);
  return {wide.slice(1, 0, c.C), gpu_operand(wide, c.dtype).slice(1, 0, c.C)};
}
std::pair<Tensor, Tensor> param_operand(int64_t C, DType dtype, uint32_t stream, float lo, float hi) {
  const Tensor t = reference_input(random_tensor({C}, stream, lo, hi), dtype);
  return {t, gpu_operand(t, dtype)};
}

class NormGpu : public ::testing::TestWithParam<NormCase> {};

TEST_P(NormGpu, LayerNormMatchesCpu) {
  const NormCase& c = GetParam();
  const float eps = 1e-5f;
  const auto [x, xg] = operand(c, 41);
  const auto [w, wg] = param_operand(c.C, c.dtype, 42, 0.5f, 1.5f);
  const auto [b, bg] = param_operand(c.C, c.dtype, 43, -0.5f, 0.5f);
  Tensor y = Tensor::empty({c.rows, c.C}), mean = Tensor::empty({c.rows}), rstd = Tensor::empty({c.rows});
  kernels::layernorm_forward(x, w, b, eps, y, mean, rstd);
  Tensor yg = Tensor::empty({c.rows, c.C}, c.dtype, gpu());
  Tensor meang = Tensor::empty({c.rows}, F32, gpu()), rstdg = Tensor::empty({c.rows}, F32, gpu());
  kernels::layernorm_forward(xg, wg, bg, eps, yg, meang, rstdg);
  EXPECT_GPU_NEAR(yg, y, activation_tol(c.dtype), "y");
  EXPECT_GPU_NEAR(meang, mean, kF32Tol, "mean");
  EXPECT_GPU_NEAR(rstdg, rstd, kF32Tol, "rstd");

  const auto [dy, dyg] = operand(c, 44);
  const Tensor dw0 = random_tensor({c.C}, 45), db0 = random_tensor({c.C}, 46);
  Tensor dx = Tensor::empty({c.rows, c.C}), dw = dw0.clone(), db = db0.clone();
  kernels::layernorm_backward(dy, x, w, mean, rstd, dx, dw, db);
  Tensor dxg = Tensor::empty({c.rows, c.C}, c.dtype, gpu()), dwg = on_gpu(dw0), dbg = on_gpu(db0);
  kernels::layernorm_backward(dyg, xg, wg, meang, rstdg, dxg, dwg, dbg);
  EXPECT_GPU_NEAR(dxg, dx, activation_tol(c.dtype), "dx");
  EXPECT_GPU_NEAR(dwg, dw, kF32Tol, "dweight (accumulated)");
  EXPECT_GPU_NEAR(dbg, db, kF32Tol, "dbias (accumulated)");

  // No bias, no bias gradient (undefined tensors skip that work).
  Tensor none;
  kernels::layernorm_forward(xg, wg, none, eps, yg, meang, rstdg);
  kernels::layernorm_forward(x, w, none, eps, y, mean, rstd);
  EXPECT_GPU_NEAR(yg, y, activation_tol(c.dtype), "y without bias");
  Tensor none_grad;
  kernels::layernorm_backward(dyg, xg, wg, meang, rstdg, dxg, dwg, none_grad);
  kernels::layernorm_backward(dy, x, w, mean, rstd, dx, dw, none_grad);
  EXPECT_GPU_NEAR(dwg, dw, kF32Tol, "dweight after a second accumulation");
}

TEST_P(NormGpu, RmsNormMatchesCpu) {
  const NormCase& c = GetParam();
  const float eps = 1e-6f;
  const auto [x, xg] = operand(c, 51);
  const auto [w, wg] = param_operand(c.C, c.dtype, 52, 0.5f, 1.5f);
  Tensor y = Tensor::empty({c.rows, c.C}), rstd = Tensor::empty({c.rows});
  kernels::rmsnorm_forward(x, w, eps, y, rstd);
  Tensor yg = Tensor::empty({c.rows, c.C}, c.dtype, gpu()), rstdg = Tensor::empty({c.rows}, F32, gpu());
  kernels::rmsnorm_forward(xg, wg, eps, yg, rstdg);
  EXPECT_GPU_NEAR(yg, y, activation_tol(c.dtype), "y");
  EXPECT_GPU_NEAR(rstdg, rstd, kF32Tol, "rstd");

  const auto [dy, dyg] = operand(c, 53);
  const Tensor dw0 = random_tensor({c.C}, 54);
  Tensor dx = Tensor::empty({c.rows, c.C}), dw = dw0.clone();
  kernels::rmsnorm_backward(dy, x, w, rstd, dx, dw);
  Tensor dxg = Tensor::empty({c.rows, c.C}, c.dtype, gpu()), dwg = on_gpu(dw0);
  kernels::rmsnorm_backward(dyg, xg, wg, rstdg, dxg, dwg);
  EXPECT_GPU_NEAR(dxg, dx, activation_tol(c.dtype), "dx");
  EXPECT_GPU_NEAR(dwg, dw, kF32Tol, "dweight (accumulated)");
}

const NormCase kNormCases[] = {
    {"f32_c64", 37, 64, F32, 0},        {"f32_c1000_odd", 9, 1000, F32, 0},  {"f32_c768_strided", 20, 768, F32, 16},
    {"f32_c4096", 6, 4096, F32, 0},     {"f32_c3_tiny", 5, 3, F32, 0},       {"bf16_c64", 37, 64, BF16, 0},
    // LayerNorm's two [C] accumulators exceed the shared-memory budget: partial rows in global memory.
    {"f32_c6144_global_acc", 70, 6144, F32, 0},
    {"bf16_c1000_odd", 9, 1000, BF16, 0}, {"bf16_c2048", 64, 2048, BF16, 0}, {"bf16_c768_strided", 12, 768, BF16, 8},
};
INSTANTIATE_TEST_SUITE_P(Cases, NormGpu, ::testing::ValuesIn(kNormCases),
                         [](const ::testing::TestParamInfo<NormCase>& i) { return std::string(i.param.name); });

// ---- GELU, SwiGLU --------------------------------------------------------------------------

class ActivationGpu : public ::testing::TestWithParam<DType> {};

TEST_P(ActivationGpu, GeluForwardBackwardMatchCpu) {
  const DType dt = GetParam();
  // {7, 333}: not a multiple of any vector width (one element per thread); {8, 512}: the
  // 16-byte path (4 f32 or 8 bf16 per access).
  for (const Shape& shape : {Shape{7, 333}, Shape{8, 512}}) {
    SCOPED_TRACE(shape_str(shape));
    const Tensor x = reference_input(random_tensor(shape, 61, -4, 4), dt);
    const Tensor dy = reference_input(random_tensor(shape, 62), dt);
    Tensor y = Tensor::empty(shape), dx = Tensor::empty(shape);
    kernels::gelu_forward(x, y);
    kernels::gelu_backward(dy, x, dx);
    const Tensor xg = gpu_operand(x, dt);
    Tensor yg = Tensor::empty(shape, dt, gpu()), dxg = Tensor::empty(shape, dt, gpu());
    kernels::gelu_forward(xg, yg);
    kernels::gelu_backward(gpu_operand(dy, dt), xg, dxg);
    EXPECT_GPU_NEAR(yg, y, activation_tol(dt), "gelu y");
    EXPECT_GPU_NEAR(dxg, dx, activation_tol(dt), "gelu dx");

    // In place, as the MLP uses them: y aliases x, dx aliases dy.
    Tensor inplace = gpu_operand(x, dt);
    kernels::gelu_forward(inplace, inplace);
    EXPECT_GPU_NEAR(inplace, y, activation_tol(dt), "gelu y in place");
    Tensor dinplace = gpu_operand(dy, dt);
    kernels::gelu_backward(dinplace, xg, dinplace);
    EXPECT_GPU_NEAR(dinplace, dx, activation_tol(dt), "gelu dx in place");
  }
}

TEST_P(ActivationGpu, SwigluForwardBackwardMatchCpu) {
  const DType dt = GetParam();
  const int64_t rows = 19, inter = 300;
  // gate and up as the two halves of one fused [rows, 2 * inter] projection (row-strided views).
  const Tensor fused = reference_input(random_tensor({rows, 2 * inter}, 63, -4, 4), dt);
  const Tensor gate = fused.slice(1, 0, inter), up = fused.slice(1, inter, 2 * inter);
  const Tensor dy = reference_input(random_tensor({rows, inter}, 64), dt);
  Tensor y = Tensor::empty({rows, inter}), dgate = Tensor::empty({rows, inter}), dup = Tensor::empty({rows, inter});
  kernels::swiglu_forward(gate, up, y);
  kernels::swiglu_backward(dy, gate, up, dgate, dup);

  const Tensor fg = gpu_operand(fused, dt);
  const Tensor gg = fg.slice(1, 0, inter), ug = fg.slice(1, inter, 2 * inter);
  Tensor yg = Tensor::empty({rows, inter}, dt, gpu());
  Tensor dfused = Tensor::empty({rows, 2 * inter}, dt, gpu());
  Tensor dgg = dfused.slice(1, 0, inter), dug = dfused.slice(1, inter, 2 * inter);
  kernels::swiglu_forward(gg, ug, yg);
  kernels::swiglu_backward(gpu_operand(dy, dt), gg, ug, dgg, dug);
  EXPECT_GPU_NEAR(yg, y, activation_tol(dt), "swiglu y");
  EXPECT_GPU_NEAR(dgg, dgate, activation_tol(dt), "swiglu dgate");
  EXPECT_GPU_NEAR(dug, dup, activation_tol(dt), "swiglu dup");

  // dgate aliasing dy (allowed by the header).
  Tensor dy_inplace = gpu_operand(dy, dt);
  Tensor dup2 = Tensor::empty({rows, inter}, dt, gpu());
  kernels::swiglu_backward(dy_inplace, gg, ug, dy_inplace, dup2);
  EXPECT_GPU_NEAR(dy_inplace, dgate, activation_tol(dt), "swiglu dgate aliasing dy");
  EXPECT_GPU_NEAR(dup2, dup, activation_tol(dt), "swiglu dup with dgate aliasing dy");
}

TEST_P(ActivationGpu, ResidualSiluForwardBackwardMatchCpu) {
  const DType dt = GetParam();
  for (const Shape& shape : {Shape{7, 333}, Shape{8, 512}}) {
    SCOPED_TRACE(shape_str(shape));
    const Tensor x = reference_input(random_tensor(shape, 65, -2, 2), dt);
    const Tensor pre = reference_input(random_tensor(shape, 66, -6, 6), dt);
    const Tensor dy = reference_input(random_tensor(shape, 67), dt);
    Tensor y = Tensor::empty(shape), dpre = Tensor::empty(shape);
    kernels::residual_silu_forward(x, pre, y);
    kernels::silu_backward(dy, pre, dpre);
    const Tensor xg = gpu_operand(x, dt), pg = gpu_operand(pre, dt);
    Tensor yg = Tensor::empty(shape, dt, gpu()), dg = Tensor::empty(shape, dt, gpu());
    kernels::residual_silu_forward(xg, pg, yg);
    kernels::silu_backward(gpu_operand(dy, dt), pg, dg);
    EXPECT_GPU_NEAR(yg, y, activation_tol(dt), "residual silu y");
    EXPECT_GPU_NEAR(dg, dpre, activation_tol(dt), "silu dpre");
    // In place, as MedusaHeads uses them: y aliases pre, dpre aliases dy.
    Tensor yi = gpu_operand(pre, dt);
    kernels::residual_silu_forward(xg, yi, yi);
    EXPECT_GPU_NEAR(yi, y, activation_tol(dt), "residual silu y in place");
    Tensor di = gpu_operand(dy, dt);
    kernels::silu_backward(di, pg, di);
    EXPECT_GPU_NEAR(di, dpre, activation_tol(dt), "silu dpre in place");
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ActivationGpu, ::testing::Values(F32, BF16),
                         [](const ::testing::TestParamInfo<DType>& i) { return std::string(dtype_label(i.param)); });

// ---- RoPE ----------------------------------------------------------------------------------

struct RopeCase {
  const char* name;
  int64_t B, T, H, D, start;
  DType dtype;
  bool strided;  // x is the q slice of a fused [B, T, 3H, D] buffer
};
std::ostream& operator<<(std::ostream& os, const RopeCase& c) { return os << c.name; }

class RopeGpu : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeGpu, ForwardAndBackwardMatchCpu) {
  const RopeCase& c = GetParam();
  const int64_t max_pos = c.start + c.T + 3;
  Tensor cos = Tensor::empty({max_pos, c.D / 2}), sin = Tensor::empty({max_pos, c.D / 2});
  kernels::rope_tables(kernels::rope_inv_freq(c.D, 10000.0), max_pos, cos, sin);
  const Tensor cosg = on_gpu(cos), sing = on_gpu(sin);

  const int64_t heads = c.strided ? 3 * c.H : c.H;
  const Tensor buf = reference_input(random_tensor({c.B, c.T, heads, c.D}, 71), c.dtype);
  Tensor x = buf.clone();
  Tensor xv = c.strided ? x.slice(2, 0, c.H) : x;
  kernels::rope_forward(xv, cos, sin, c.start);
  Tensor xg = gpu_operand(buf, c.dtype);
  Tensor xgv = c.strided ? xg.slice(2, 0, c.H) : xg;
  kernels::rope_forward(xgv, cosg, sing, c.start);
  EXPECT_GPU_NEAR(xgv, xv, activation_tol(c.dtype), "rope forward");
  // The rest of the fused buffer (k, v heads) is untouched: compare the whole buffer.
  if (c.strided) EXPECT_GPU_NEAR(xg, x, activation_tol(c.dtype), "fused buffer after rope forward");

  Tensor d = buf.clone();
  Tensor dv = c.strided ? d.slice(2, 0, c.H) : d;
  kernels::rope_backward(dv, cos, sin, c.start);
  Tensor dg = gpu_operand(buf, c.dtype);
  Tensor dgv = c.strided ? dg.slice(2, 0, c.H) : dg;
  kernels::rope_backward(dgv, cosg, sing, c.start);
  EXPECT_GPU_NEAR(dgv, dv, activation_tol(c.dtype), "rope backward");
}

const RopeCase kRopeCases[] = {
    {"f32_d64", 2, 33, 4, 64, 0, F32, false},       {"f32_d128_start", 1, 17, 8, 128, 100, F32, false},
    {"f32_strided_qkv", 2, 12, 4, 32, 5, F32, true}, {"f32_d2", 1, 9, 3, 2, 0, F32, false},
    {"bf16_d64", 2, 64, 8, 64, 0, BF16, false},     {"bf16_strided_qkv", 3, 20, 2, 128, 7, BF16, true},
};
INSTANTIATE_TEST_SUITE_P(Cases, RopeGpu, ::testing::ValuesIn(kRopeCases),
                         [](const ::testing::TestParamInfo<RopeCase>& i) { return std::string(i.param.name); });

// Explicit position ids ([B, T] per row and [T] shared; restarts, gaps and repeats) on a fused
// q slice: the same rotation as the CPU backend, forward and backward.
TEST_P(RopeGpu, PositionIdsMatchCpu) {
  const RopeCase& c = GetParam();
  const int64_t max_pos = c.start + c.T + 3;
  Tensor cos = Tensor::empty({max_pos, c.D / 2}), sin = Tensor::empty({max_pos, c.D / 2});
  kernels::rope_tables(kernels::rope_inv_freq(c.D, 10000.0), max_pos, cos, sin);
  const Tensor cosg = on_gpu(cos), sing = on_gpu(sin);
  for (const bool per_row : {true, false}) {
    Tensor pos = Tensor::empty(per_row ? Shape{c.B, c.T} : Shape{c.T}, DType::I32);
    for (int64_t i = 0; i < pos.numel(); ++i) pos.data<int32_t>()[i] = static_cast<int32_t>((7 * i + 3) % max_pos);
    const Tensor posg = on_gpu(pos);
    const int64_t heads = c.strided ? 3 * c.H : c.H;
    const Tensor buf = reference_input(random_tensor({c.B, c.T, heads, c.D}, 72), c.dtype);
    for (const bool forward : {true, false}) {
      Tensor x = buf.clone();
      Tensor xv = c.strided ? x.slice(2, 0, c.H) : x;
      Tensor xg = gpu_operand(buf, c.dtype);
      Tensor xgv = c.strided ? xg.slice(2, 0, c.H) : xg;
      if (forward) {
        kernels::rope_forward(xv, cos, sin, pos);
        kernels::rope_forward(xgv, cosg, sing, posg);
      } else {
        kernels::rope_backward(xv, cos, sin, pos);
        kernels::rope_backward(xgv, cosg, sing, posg);
      }
      EXPECT_GPU_NEAR(xg, x, activation_tol(c.dtype), forward ? "rope forward at position ids" : "rope backward at position ids");
    }
  }
}

}  // namespace
