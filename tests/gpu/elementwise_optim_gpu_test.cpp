// kernels/elementwise, optim_kernels, muon_kernels and newton_schulz on CUDA against the CPU
// backend on the same inputs: the fused elementwise ops (contiguous and row-strided, f32 and
// bf16), bias add/grad, column and whole-tensor reductions, AdamW with and without its bf16
// compute copy, Muon's momentum pass and the Newton–Schulz orthogonalisation.
// Error measure and base tolerances: tests/support/gpu_check.h.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/muon_kernels.h"
#include "kernels/newton_schulz.h"
#include "kernels/optim_kernels.h"
#include "tests/support/gpu_check.h"
#include "tests/support/kernel_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr DType F32 = DType::F32, BF16 = DType::BF16;

double activation_tol(DType dt) { return dt == BF16 ? kBf16Rounding + kF32Tol : kF32Tol; }

// ---- elementwise ---------------------------------------------------------------------------

class ElementwiseGpu : public ::testing::TestWithParam<DType> {};

// The fused ops on [rows, cols] views of [rows, cols + pad] buffers.
void check_fused_ops(DType dt, int64_t rows, int64_t cols, int64_t pad) {
  SCOPED_TRACE("rows " + std::to_string(rows) + ", cols " + std::to_string(cols) + ", pad " + std::to_string(pad));
  const Tensor aw = reference_input(random_tensor({rows, cols + pad}, 101), dt);
  const Tensor bw = reference_input(random_tensor({rows, cols + pad}, 102), dt);
  const Tensor a = aw.slice(1, 0, cols), b = bw.slice(1, 0, cols);
  const Tensor ag = gpu_operand(aw, dt).slice(1, 0, cols), bg = gpu_operand(bw, dt).slice(1, 0, cols);
  const double tol = activation_tol(dt);

  Tensor out = Tensor::empty({rows, cols}), outg = Tensor::empty({rows, cols}, dt, gpu());
  kernels::add(a, b, out);
  kernels::add(ag, bg, outg);
  EXPECT_GPU_NEAR(outg, out, tol, "add");

  Tensor y = a.clone(), yg = ag.clone();
  kernels::add_inplace(y, b);
  kernels::add_inplace(yg, bg);
  EXPECT_GPU_NEAR(yg, y, tol, "add_inplace");

  y = a.clone();
  yg = ag.clone();
  kernels::axpy(-0.75f, b, y);
  kernels::axpy(-0.75f, bg, yg);
  EXPECT_GPU_NEAR(yg, y, tol, "axpy");

  y = a.clone();
  yg = ag.clone();
  kernels::scale_inplace(y, 3.5f);
  kernels::scale_inplace(yg, 3.5f);
  EXPECT_GPU_NEAR(yg, y, tol, "scale_inplace");

  // out aliasing an input, and a strided view written in place (the rest of the buffer untouched).
  Tensor wide = aw.clone(), wideg = gpu_operand(aw, dt);
  Tensor view = wide.slice(1, 0, cols), viewg = wideg.slice(1, 0, cols);
  kernels::add(view, b, view);
  kernels::add(viewg, bg, viewg);
  EXPECT_GPU_NEAR(wideg, wide, tol, "add into a strided view aliasing a (whole buffer)");
}

TEST_P(ElementwiseGpu, FusedOpsMatchCpu) {
  // Odd sizes: the one-element path on strided rows and on the merged dense range.
  check_fused_ops(GetParam(), 37, 515, 13);
  // Every row start 16-byte aligned (cols and ld multiples of 8): the vectorised path, strided
  // and merged, in both dtypes.
  check_fused_ops(GetParam(), 37, 512, 16);
}

TEST_P(ElementwiseGpu, BiasAddAndGradMatchCpu) {
  const DType dt = GetParam();
  const int64_t rows = 3 * 41, n = 300;
  const Tensor y0 = reference_input(random_tensor({3, 41, n}, 103), dt);  // leading dims collapse to rows
  const Tensor bias = reference_input(random_tensor({n}, 104), dt);
  Tensor y = y0.clone(), yg = gpu_operand(y0, dt);
  kernels::add_bias(y, bias);
  kernels::add_bias(yg, gpu_operand(bias, dt));
  EXPECT_GPU_NEAR(yg, y, activation_tol(dt), "add_bias");

  // Bias gradient: f32, accumulated onto a non-zero start.
  const Tensor dy = reference_input(random_tensor({rows, n}, 105), dt);
  const Tensor db0 = random_tensor({n}, 106);
  Tensor db = db0.clone(), dbg = on_gpu(db0);
  kernels::bias_grad(dy, db);
  kernels::bias_grad(gpu_operand(dy, dt), dbg);
  EXPECT_GPU_NEAR(dbg, db, kF32Tol, "bias_grad (accumulated)");
}

TEST_P(ElementwiseGpu, ReductionsMatchCpu) {
  const DType dt = GetParam();
  // Large enough for a multi-block reduction, not a multiple of any block size.
  const Tensor x = reference_input(random_tensor({1000003}, 107, -3, 3), dt);
  const Tensor xg = gpu_operand(x, dt);
  double abs_sum = 0;
  for (float v : x.to_vector()) abs_sum += std::fabs(v);
  // Both accumulate in double (the header's contract), so the only difference is the order of
  // double additions: bound it by 1e-9 of sum |x| (the sum's condition), far below any f32 path.
  EXPECT_NEAR(kernels::sum(xg), kernels::sum(x), 1e-9 * abs_sum) << "sum";
  const double ss = kernels::sum_squares(x);
  EXPECT_NEAR(kernels::sum_squares(xg), ss, 1e-9 * ss) << "sum_squares";
  EXPECT_EQ(kernels::max_abs(xg), kernels::max_abs(x)) << "max_abs is a selection: exact";

  // A row-strided view (not merged into one range): tiles per row, rows apart by ld.
  const Tensor w = reference_input(random_tensor({300, 5000}, 109, -3, 3), dt);
  const Tensor wv = w.slice(1, 7, 4700), wgv = gpu_operand(w, dt).slice(1, 7, 4700);
  double w_abs = 0;
  for (float v : wv.contiguous().to_vector()) w_abs += std::fabs(v);
  EXPECT_NEAR(kernels::sum(wgv), kernels::sum(wv), 1e-9 * w_abs) << "sum of a strided view";
  EXPECT_EQ(kernels::max_abs(wgv), kernels::max_abs(wv)) << "max_abs of a strided view";

  // The list form (gradient norms): every tensor's squares in one device reduction, an empty
  // tensor among them, against the CPU's per-tensor sum.
  const Tensor e = Tensor::empty({0}, dt);
  const double list_cpu = kernels::sum_squares(std::vector<Tensor>{x, wv, e});
  EXPECT_NEAR(kernels::sum_squares(std::vector<Tensor>{xg, wgv, gpu_operand(e, dt)}), list_cpu, 1e-9 * list_cpu)
      << "sum_squares of a list";

  // Column sums (assigned, f32 out).
  const Tensor m = reference_input(random_tensor({129, 77}, 108), dt);
  Tensor cs = Tensor::empty({77}), csg = Tensor::empty({77}, F32, gpu());
  csg.fill_(1e30);  // assigned, not accumulated
  kernels::sum_rows(m, cs);
  kernels::sum_rows(gpu_operand(m, dt), csg);
  EXPECT_GPU_NEAR(csg, cs, kF32Tol, "sum_rows");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ElementwiseGpu, ::testing::Values(F32, BF16),
                         [](const ::testing::TestParamInfo<DType>& i) { return std::string(dtype_label(i.param)); });

// ---- AdamW ---------------------------------------------------------------------------------

struct AdamState {
  Tensor p, g, m, v;
};

AdamState adam_state(int64_t n, uint32_t stream) {
  AdamState s{random_tensor({n}, stream), random_tensor({n}, stream + 1, -0.1f, 0.1f), Tensor::zeros({n}),
              Tensor::zeros({n})};
  // A few exact-zero gradients: the update must stay finite (eps) and only decay acts.
  for (int64_t i = 0; i < n; i += 97) s.g.data<float>()[i] = 0.0f;
  return s;
}

AdamState adam_on_gpu(const AdamState& s) {
  return {on_gpu(s.p), on_gpu(s.g), on_gpu(s.m), on_gpu(s.v)};
}

kernels::AdamWStep step_config(int64_t step) {
  kernels::AdamWStep s;
  s.lr = 3e-3f;
  s.beta1 = 0.9f;
  s.beta2 = 0.95f;
  s.eps = 1e-8f;
  s.weight_decay = 0.1f;
  s.step = step;
  return s;
}

TEST(AdamWGpu, ThreeStepsMatchCpu) {
  const int64_t n = 100003;  // odd: not a multiple of the block size
  AdamState cpu = adam_state(n, 111);
  AdamState dev = adam_on_gpu(cpu);
  for (int64_t step = 1; step <= 3; ++step) {
    kernels::adamw_update(cpu.p, cpu.g, cpu.m, cpu.v, step_config(step));
    kernels::adamw_update(dev.p, dev.g, dev.m, dev.v, step_config(step));
  }
  EXPECT_GPU_NEAR(dev.p, cpu.p, kF32Tol, "param");
  EXPECT_GPU_NEAR(dev.m, cpu.m, kF32Tol, "exp_avg");
  EXPECT_GPU_NEAR(dev.v, cpu.v, kF32Tol, "exp_avg_sq");
}

TEST(AdamWGpu, Bf16CopyIsTheRoundedMasterWeight) {
  const int64_t n = 65537;
  AdamState cpu = adam_state(n, 121);
  AdamState dev = adam_on_gpu(cpu);
  Tensor low = Tensor::empty({n}, BF16, gpu());
  for (int64_t step = 1; step <= 2; ++step) {
    kernels::adamw_update(cpu.p, cpu.g, cpu.m, cpu.v, step_config(step));
    kernels::adamw_update(dev.p, dev.g, dev.m, dev.v, step_config(step), low);
  }
  EXPECT_GPU_NEAR(dev.p, cpu.p, kF32Tol, "master param");
  // The copy is the updated master weight rounded to nearest even, element for element.
  const std::vector<float> master = dev.p.to(Device::cpu()).to_vector();
  const Tensor low_host = low.to(Device::cpu());
  const bf16_t* bits = low_host.data<bf16_t>();
  int64_t mismatches = 0;
  for (int64_t i = 0; i < n; ++i) mismatches += bits[i].bits != float_to_bf16(master[i]);
  EXPECT_EQ(mismatches, 0) << "elements whose bf16 copy is not round-to-nearest-even of the master weight";
}

// ---- Muon momentum, Newton–Schulz ------------------------------------------------------------

TEST(MuonMomentumGpu, EveryFormMatchesCpu) {
  const int64_t n = 4099;
  for (const bool nesterov : {false, true}) {
    for (const bool ema : {false, true}) {
      const Tensor g = random_tensor({n}, 131), b0 = random_tensor({n}, 132);
      Tensor b = b0.clone(), u = Tensor::empty({n});
      Tensor bg = on_gpu(b0), ug = Tensor::empty({n}, F32, gpu());
      kernels::muon_momentum(g, b, u, 0.95f, nesterov, ema);
      kernels::muon_momentum(on_gpu(g), bg, ug, 0.95f, nesterov, ema);
      const std::string form = std::string(nesterov ? "nesterov" : "plain") + (ema ? " ema" : " sum");
      EXPECT_GPU_NEAR(bg, b, kF32Tol, "buffer, " + form);
      EXPECT_GPU_NEAR(ug, u, kF32Tol, "update, " + form);
    }
  }
}

// Newton–Schulz iterates a polynomial that multiplies small singular directions by up to
// a = 3.44 per step, so two f32 evaluations that sum in different orders drift apart by more
// than 1e-5. The fair reference is fp64: the GPU's f32 result must be as close to it as the
// CPU's f32 result is (within 4x, plus 1e-6 for results that are both essentially exact).
TEST(NewtonSchulzGpu, F32IsAsAccurateAsTheCpuAgainstFp64) {
  struct Shape2 {
    int64_t rows, cols;
  };
  for (const Shape2 s : {Shape2{64, 64}, Shape2{96, 256}, Shape2{384, 128}, Shape2{33, 70}}) {
    const Tensor u = random_tensor({s.rows, s.cols}, 141);
    const kernels::NewtonSchulzConfig cfg;
    const Tensor cpu32 = kernels::newton_schulz(u, cfg);
    Tensor dev = Tensor::empty({s.rows, s.cols}, F32, gpu());
    kernels::newton_schulz(on_gpu(u), dev, cfg);

    const std::vector<float> uf = u.to_vector();
    std::vector<double> g(uf.begin(), uf.end()), ref(g.size());
    kernels::newton_schulz<double>(g.data(), ref.data(), s.rows, s.cols, cfg);
    std::vector<float> ref32(ref.begin(), ref.end());
    const Tensor fp64 = Tensor::from_vector(ref32, {s.rows, s.cols});

    const double cpu_err = max_rel_diff(cpu32, fp64), gpu_err = gpu_error(dev, fp64);
    EXPECT_LT(gpu_err, 4 * cpu_err + 1e-6) << s.rows << "x" << s.cols << ": GPU f32 error against fp64 " << gpu_err
                                           << ", CPU f32 error " << cpu_err;
    EXPECT_GPU_NEAR(dev, cpu32, 1e-4, std::to_string(s.rows) + "x" + std::to_string(s.cols) + " against CPU f32");
  }
}

// The bf16 emulation (COSMOS's default): every GEMM and elementwise result rounded to bf16 on
// both sides, so after one step the GPU and the CPU differ only where an f32 sum taken in another
// order lands on the other side of a bf16 rounding boundary (one bf16 ulp there, and less where
// that moves later results). After five steps that drift is amplified like the f32 one above, so
// the full iteration is held, as there, to the CPU's own error against fp64. Tall and wide
// inputs; a bf16 u into an f32 out (the iterate in a separate buffer) and f32 into f32.
TEST(NewtonSchulzGpu, Bf16MatchesTheCpuEmulation) {
  struct Shape2 {
    int64_t rows, cols;
  };
  for (const Shape2 s : {Shape2{64, 48}, Shape2{48, 96}}) {
    for (const DType in_dtype : {F32, BF16}) {
      const std::string what = std::to_string(s.rows) + "x" + std::to_string(s.cols) + " " + dtype_label(in_dtype);
      const Tensor u = reference_input(random_tensor({s.rows, s.cols}, 151), in_dtype);
      kernels::NewtonSchulzConfig cfg;
      cfg.bf16 = true;
      for (const int steps : {1, 5}) {
        cfg.steps = steps;
        const Tensor cpu = kernels::newton_schulz(u, cfg);
        Tensor dev = Tensor::empty({s.rows, s.cols}, F32, gpu());
        kernels::newton_schulz(gpu_operand(u, in_dtype), dev, cfg);
        if (steps == 1) {
          EXPECT_GPU_NEAR(dev, cpu, 3 * kBf16Rounding, what + ", one step, against the CPU emulation");
          continue;
        }
        kernels::NewtonSchulzConfig exact = cfg;
        exact.bf16 = false;
        const std::vector<float> uf = u.to_vector();
        std::vector<double> g(uf.begin(), uf.end()), ref(g.size());
        kernels::newton_schulz<double>(g.data(), ref.data(), s.rows, s.cols, exact);
        const Tensor fp64 = Tensor::from_vector(std::vector<float>(ref.begin(), ref.end()), {s.rows, s.cols});
        const double cpu_err = max_rel_diff(cpu, fp64), gpu_err = gpu_error(dev, fp64);
        EXPECT_LT(gpu_err, 2 * cpu_err + 0.02) << what << ": GPU bf16 error against fp64 " << gpu_err
                                               << ", CPU bf16 emulation's " << cpu_err;
      }
    }
  }
}

}  // namespace
