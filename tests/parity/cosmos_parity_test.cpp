// COSMOS against a float64 PyTorch COSMOS written from ALGORITHMS.md 1: ten steps of
// fixed gradients on a 64x48 and a 48x64 matrix (rank 16) and a vector (the Adam
// branch), under the reference's defaults and under the README's recipe with no
// Nesterov, weight decay and the reference-compat Adam branch; both with fp32
// Newton–Schulz (see ReferenceDefaults for why), and the bf16 NS checked on its own.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/linalg.h"
#include "kernels/newton_schulz.h"
#include "optim/cosmos.h"
#include "optim/schedule.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

std::vector<float> difference(const Tensor& a, const Tensor& b) {
  const auto va = a.to_vector(), vb = b.to_vector();
  std::vector<float> out(va.size());
  for (size_t k = 0; k < va.size(); ++k) out[k] = static_cast<float>(double(va[k]) - vb[k]);
  return out;
}

// Runs both sides and checks params (rel 1e-5) and updates (rel `update_tol`) after every step.
void check_against_torch(const std::string& tag, const CosmosConfig& cfg, double update_tol) {
  std::vector<Param> params;
  params.emplace_back("a.weight", random_tensor({64, 48}, 1, -0.25f, 0.25f), ParamRole::Matrix);
  params.emplace_back("b.weight", random_tensor({48, 64}, 2, -0.25f, 0.25f), ParamRole::Matrix);
  params.emplace_back("norm.weight", random_tensor({48}, 3), ParamRole::Vector);
  std::vector<Param*> ptrs;
  for (Param& p : params) ptrs.push_back(&p);
  Cosmos opt(ptrs, cfg);
  ScheduleConfig sched{"cosine", 1e-2, 3, 10, 0.1, 0.2};

  const int steps = 10;
  TensorMap inputs;
  std::vector<float> lrs;
  for (Param& p : params) {
    inputs["param." + p.name] = p.value.clone();
    inputs["wd." + p.name] = Tensor::full({1}, opt.decay_for(p));
    inputs["matrix." + p.name] = Tensor::full({1}, opt.uses_matrix_branch(p) ? 1.0 : 0.0);
  }
  std::vector<std::vector<Tensor>> after(steps);
  for (int s = 0; s < steps; ++s) {
    const double lr = static_cast<float>(learning_rate(sched, s));
    lrs.push_back(static_cast<float>(lr));
    for (size_t i = 0; i < params.size(); ++i) {
      Tensor g = random_tensor(params[i].value.shape(), 100 + 10 * s + i);
      params[i].grad.copy_(g);
      inputs["grad." + std::to_string(s) + "." + params[i].name] = g;
    }
    opt.step(lr);
    for (Param& p : params) after[s].push_back(p.value.clone());
  }
  inputs["lr"] = Tensor::from_vector(lrs, {steps});
  inputs["hyper"] = Tensor::from_vector(
      std::vector<float>{float(cfg.beta1), float(cfg.beta2), float(cfg.eps), float(cfg.lr_ratio), float(cfg.gamma),
                         cfg.nesterov ? 1.0f : 0.0f, cfg.reference_compat ? 1.0f : 0.0f,
                         cfg.newton_schulz.bf16 ? 1.0f : 0.0f, float(cfg.rank)},
      {9});
  const std::string in = ::testing::TempDir() + "/cosmos_in_" + tag + ".anvt";
  const std::string out = ::testing::TempDir() + "/cosmos_out_" + tag + ".anvt";
  write_tensor_file(in, inputs);
  run_torch_script("tests/parity/torch_cosmos.py", in + " " + out);
  const TensorMap ref = read_tensor_file(out);
  for (size_t i = 0; i < params.size(); ++i) {
    double worst_param = 0, worst_update = 0;
    Tensor prev = inputs.at("param." + params[i].name), prev_ref = prev;
    for (int s = 0; s < steps; ++s) {
      const Tensor& r = ref.at("param." + std::to_string(s) + "." + params[i].name);
      const double err = max_rel_diff(after[s][i], r);
      EXPECT_LE(err, 1e-5) << tag << " step " << s << " " << params[i].name;
      const std::vector<float> ua = difference(after[s][i], prev), ub = difference(r, prev_ref);
      const int64_t n = static_cast<int64_t>(ua.size());
      const double uerr = max_rel_diff(Tensor::from_vector(ua, {n}), Tensor::from_vector(ub, {n}));
      EXPECT_LE(uerr, update_tol) << tag << " update at step " << s << " " << params[i].name;
      worst_param = std::max(worst_param, err);
      worst_update = std::max(worst_update, uerr);
      prev = after[s][i];
      prev_ref = r;
    }
    std::printf("cosmos parity [%s] %-12s max rel param error %.3g, max rel update error %.3g\n", tag.c_str(),
                params[i].name.c_str(), worst_param, worst_update);
  }
}

// x rounded to the nearest bf16 (8 significant bits, ties to even) straight from f64:
// no intermediate fp32 rounding.
double round_to_bf16(double x) {
  if (x == 0 || !std::isfinite(x)) return x;
  int exponent = 0;
  const double mantissa = std::frexp(x, &exponent);  // in [0.5, 1)
  return std::ldexp(std::nearbyint(std::ldexp(mantissa, 8)), exponent - 8);
}

// Newton–Schulz of g written from kernels/newton_schulz.h's contract, naive loops in f64:
// every op's result rounded to bf16 at the points the header names (torch's bf16 tensor
// ops), sums exact in f64 where the kernel accumulates in fp32. `rounded` false skips every
// rounding (plain f64 Newton–Schulz with the same coefficients). A tall g runs the
// reference's transposed (wide) iteration.
std::vector<double> bf16_newton_schulz_reference(const Tensor& g, const kernels::NewtonSchulzConfig& cfg,
                                                 bool rounded = true) {
  auto round_to_bf16 = [rounded](double x) { return rounded ? ::round_to_bf16(x) : x; };
  const int64_t rows = g.size(0), cols = g.size(1);
  const bool tall = rows > cols;
  const int64_t k = tall ? cols : rows, inner = tall ? rows : cols;  // X is k x inner
  const std::vector<float> gv = g.to_vector();
  std::vector<double> x(k * inner);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) (tall ? x[c * inner + r] : x[r * inner + c]) = round_to_bf16(gv[r * cols + c]);
  double sum_sq = 0;
  for (double v : x) sum_sq += v * v;
  const double denom = round_to_bf16(round_to_bf16(std::sqrt(sum_sq)) + cfg.eps);
  for (double& v : x) v = round_to_bf16(v / denom);
  auto coefficient = [&](double v) { return cfg.bf16_coefficients ? ::round_to_bf16(v) : v; };
  const double a = coefficient(cfg.a), b = coefficient(cfg.b), c = coefficient(cfg.c);
  std::vector<double> A(k * k), AA(k * k), B(k * k), y(k * inner);
  for (int step = 0; step < cfg.steps; ++step) {
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) {
        double acc = 0;
        for (int64_t t = 0; t < inner; ++t) acc += x[i * inner + t] * x[j * inner + t];
        A[i * k + j] = round_to_bf16(acc);
      }
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) {
        double acc = 0;
        for (int64_t t = 0; t < k; ++t) acc += A[i * k + t] * A[t * k + j];
        AA[i * k + j] = round_to_bf16(acc);
      }
    for (int64_t i = 0; i < k * k; ++i) B[i] = round_to_bf16(round_to_bf16(b * A[i]) + round_to_bf16(c * AA[i]));
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < inner; ++j) {
        double acc = 0;
        for (int64_t t = 0; t < k; ++t) acc += B[i * k + t] * x[t * inner + j];
        y[i * inner + j] = round_to_bf16(acc);
      }
    for (int64_t i = 0; i < k * inner; ++i) x[i] = round_to_bf16(round_to_bf16(a * x[i]) + y[i]);
  }
  std::vector<double> out(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = tall ? x[c * inner + r] : x[r * inner + c];
  return out;
}

// ||got - ref||_F / ||ref||_F.
double rel_frobenius_diff(const Tensor& got, const std::vector<double>& ref) {
  const std::vector<float> gv = got.to_vector();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff += (gv[i] - ref[i]) * (gv[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  return std::sqrt(diff / norm);
}

// How far the kernel may be from the rounded reference. Both round to bf16 at the same points,
// so they differ only where the kernel's fp32 sum of K bf16 x bf16 products (each exact in
// fp32) is itself rounded (error <= K 2^-24 of the sum's terms) and that rounding carries it
// across a bf16 rounding boundary (spacing 2^-8 relative): at most a fraction K 2^-24 / 2^-9 =
// K 2^-15 of the rounded values, each then off by one bf16 ulp, 2^-8 of itself. Rounding every
// value (error uniform in +-2^-9, rms 2^-9/sqrt(3)) moves the result by `full_rounding` (the
// rounded reference against the unrounded one, measured: the Newton–Schulz map's sensitivity
// to bf16 noise over all its iterations). Independent perturbations add in quadrature and
// propagate linearly at this size, so flips of a K 2^-15 fraction of the values, each
// 2^-8 / (2^-9/sqrt(3)) = 2 sqrt(3) times the rms rounding error, move it by about
// 2 sqrt(3) sqrt(K 2^-15) full_rounding.
double bf16_reordering_tolerance(int64_t reduction_length, double full_rounding) {
  return 2 * std::sqrt(3.0) * std::sqrt(std::ldexp(double(reduction_length), -15)) * full_rounding;
}

// A rows x cols (rows >= cols) matrix with singular values evenly spaced in [0.5, 1] and random
// singular vectors.
Tensor well_conditioned_matrix(int64_t rows, int64_t cols, uint32_t stream) {
  std::vector<double> u, v;
  for (float f : random_tensor({rows, cols}, stream).to_vector()) u.push_back(f);
  for (float f : random_tensor({cols, cols}, stream + 1).to_vector()) v.push_back(f);
  kernels::qr_orthonormal<double>(rows, cols, u.data());
  kernels::qr_orthonormal<double>(cols, cols, v.data());
  std::vector<float> g(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      double acc = 0;
      for (int64_t j = 0; j < cols; ++j) acc += u[r * cols + j] * (1.0 - 0.5 * j / (cols - 1)) * v[c * cols + j];
      g[r * cols + c] = static_cast<float>(acc);
    }
  return Tensor::from_vector(g, {rows, cols});
}

}  // namespace

TEST(CosmosParity, ReferenceDefaults) {
  CosmosConfig cfg;  // lr_ratio 0.1, gamma 0.2, Nesterov; betas (0.9, 0.999) as the class defaults
  cfg.beta1 = 0.9f; cfg.beta2 = 0.999f; cfg.eps = 1e-8f; cfg.lr_ratio = 0.1f; cfg.gamma = 0.2f;
  cfg.rank = 16;
  // Newton–Schulz in fp32 here, not the default bf16: the residual R = D - D P P^T has
  // an exact r-dim null space, bf16 rounding puts ~4e-3 noise there and NS multiplies
  // small singular values by a^5 ~ 485, so in bf16 those r directions come out O(1)
  // and differ between any two bf16 implementations (measured: 10-15% of the update).
  // The bf16 arithmetic itself is checked against an f64 reference rounded at the same points below.
  cfg.newton_schulz.bf16 = false;
  check_against_torch("defaults", cfg, 1e-3);
}

TEST(CosmosParity, Bf16NewtonSchulzMatchesRoundedReference) {
  // The bf16 emulation against bf16_newton_schulz_reference (the same rounding points, exact
  // sums), with fp32 coefficients (COSMOS's default) and with bf16 ones (torch 1.13's CPU
  // rule). Not against torch's own bf16 kernels: their summation differs per CPU. The input is
  // well conditioned (singular values in [0.5, 1]): Newton–Schulz multiplies a perturbation
  // along a tiny singular value by up to a = 3.44 per iteration, so on an ill-conditioned
  // input one fp32-vs-exact rounding flip can dominate the result (a uniform random 64 x 48:
  // 7e-3, where flips on this one give 0).
  const Tensor g = well_conditioned_matrix(64, 48, 5);
  const kernels::NewtonSchulzConfig cosmos_default = CosmosConfig{}.newton_schulz;  // bf16, fp32 coefficients
  ASSERT_TRUE(cosmos_default.bf16);
  kernels::NewtonSchulzConfig cpu_torch = cosmos_default;
  cpu_torch.bf16_coefficients = true;
  kernels::NewtonSchulzConfig unrounded = cosmos_default;
  unrounded.bf16 = false;
  const std::vector<double> ref = bf16_newton_schulz_reference(g, cosmos_default);
  const std::vector<double> ref_bf16_coefficients = bf16_newton_schulz_reference(g, cpu_torch);
  const std::vector<double> ref_unrounded = bf16_newton_schulz_reference(g, cosmos_default, /*rounded=*/false);
  std::vector<float> ref_f32(ref.begin(), ref.end());
  const double full_rounding = rel_frobenius_diff(Tensor::from_vector(ref_f32, g.shape()), ref_unrounded);
  const double tolerance = bf16_reordering_tolerance(64, full_rounding);  // K <= 64: the Gram's reduction

  const double fp32_coefficients = rel_frobenius_diff(kernels::newton_schulz(g, cosmos_default), ref);
  const double bf16_coefficients = rel_frobenius_diff(kernels::newton_schulz(g, cpu_torch), ref_bf16_coefficients);
  // What the tolerance must tell apart: no bf16 rounding at all, and the other coefficients.
  const double without_rounding = rel_frobenius_diff(kernels::newton_schulz(g, unrounded), ref);
  const double other_coefficients = rel_frobenius_diff(kernels::newton_schulz(g, cosmos_default), ref_bf16_coefficients);
  std::printf("newton-schulz bf16 vs rounded f64 reference: %.3g (fp32 coefficients), %.3g (bf16 coefficients); "
              "tolerance %.3g; all-rounding effect %.3g; unrounded kernel %.3g, other coefficients %.3g\n",
              fp32_coefficients, bf16_coefficients, tolerance, full_rounding, without_rounding, other_coefficients);
  EXPECT_LE(fp32_coefficients, tolerance);
  EXPECT_LE(bf16_coefficients, tolerance);
  EXPECT_GT(without_rounding, tolerance);
  EXPECT_GT(other_coefficients, tolerance);
  // And it is Newton–Schulz: the f64 iteration in torch (independent code) within bf16's drift.
  const std::string in = ::testing::TempDir() + "/ns_in.anvt", out = ::testing::TempDir() + "/ns_out.anvt";
  write_tensor_file(in, {{"ns_input", g}});
  run_torch_script("tests/parity/torch_cosmos.py", in + " " + out);
  const TensorMap torch_ref = read_tensor_file(out);
  const std::vector<float> torch_f64 = torch_ref.at("ns_f64").to_vector();
  EXPECT_LE(rel_frobenius_diff(Tensor::from_vector(std::vector<float>(ref_unrounded.begin(), ref_unrounded.end()),
                                                   g.shape()),
                               std::vector<double>(torch_f64.begin(), torch_f64.end())),
            1e-6);
  EXPECT_LE(max_rel_diff(kernels::newton_schulz(g, cosmos_default), torch_ref.at("ns_f64")), 0.15);  // bf16 drift
}

TEST(CosmosParity, ReadmeRecipeFp32NewtonSchulzNoNesterovCompatAdam) {
  CosmosConfig cfg;
  cfg.beta1 = 0.95f; cfg.beta2 = 0.95f; cfg.eps = 1e-8f; cfg.lr_ratio = 0.2f; cfg.gamma = 0.2f;
  cfg.weight_decay = 0.1f;
  cfg.decay_vectors = true;
  cfg.nesterov = false;
  cfg.reference_compat = true;
  cfg.newton_schulz.bf16 = false;
  cfg.rank = 16;
  check_against_torch("readme", cfg, 1e-3);
}
