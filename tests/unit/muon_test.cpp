// Muon (ALGORITHMS.md 2a): Newton–Schulz against an fp64 reference and the notes'
// numeric checks, the update math over two steps, scale conventions, state, and the
// hybrid optimizer's routing of real models' params.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "kernels/elementwise.h"
#include "kernels/newton_schulz.h"
#include "models/transformer.h"
#include "optim/cosmos.h"
#include "optim/hybrid.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

using Mat = std::vector<double>;  // row-major

Mat to_mat(const Tensor& t) {
  const std::vector<float> v = t.to_vector();
  return Mat(v.begin(), v.end());
}

Mat matmul_nt(const Mat& a, const Mat& b, int n, int k, int m, bool trans_b) {  // a [n,k] @ op(b) -> [n,m]
  Mat c(static_cast<size_t>(n) * m, 0.0);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j)
      for (int p = 0; p < k; ++p) c[i * m + j] += a[i * k + p] * (trans_b ? b[j * k + p] : b[p * m + j]);
  return c;
}

Mat transpose(const Mat& a, int rows, int cols) {
  Mat t(a.size());
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) t[j * rows + i] = a[i * cols + j];
  return t;
}

// The fp64 reference, written the way the notes state it: transpose tall inputs,
// normalise by the Frobenius norm, iterate on the small Gram matrix.
Mat newton_schulz_fp64(Mat x, int rows, int cols, const kernels::NewtonSchulzConfig& k) {
  const bool tall = rows > cols;
  if (tall) {
    x = transpose(x, rows, cols);
    std::swap(rows, cols);
  }
  double norm = 0;
  for (double v : x) norm += v * v;
  norm = std::sqrt(norm);
  for (double& v : x) v /= norm + k.eps;
  for (int it = 0; it < k.steps; ++it) {
    const Mat a = matmul_nt(x, x, rows, cols, rows, true);
    const Mat aa = matmul_nt(a, a, rows, rows, rows, false);
    Mat b(a.size());
    for (size_t i = 0; i < b.size(); ++i) b[i] = k.b * a[i] + k.c * aa[i];
    const Mat bx = matmul_nt(b, x, rows, rows, cols, false);
    for (size_t i = 0; i < x.size(); ++i) x[i] = k.a * x[i] + bx[i];
  }
  return tall ? transpose(x, rows, cols) : x;
}

// Singular values, descending: eigenvalues of the smaller Gram matrix by cyclic Jacobi.
std::vector<double> singular_values(const Mat& m, int rows, int cols) {
  const Mat x = rows > cols ? transpose(m, rows, cols) : m;
  const int n = std::min(rows, cols), k = std::max(rows, cols);
  Mat g = matmul_nt(x, x, n, k, n, true);
  for (int sweep = 0; sweep < 60; ++sweep)
    for (int p = 0; p < n; ++p)
      for (int q = p + 1; q < n; ++q) {
        const double apq = g[p * n + q];
        if (std::fabs(apq) < 1e-300) continue;
        const double theta = (g[q * n + q] - g[p * n + p]) / (2 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int r = 0; r < n; ++r) {  // G <- J^T G J
          const double grp = g[r * n + p], grq = g[r * n + q];
          g[r * n + p] = c * grp - s * grq;
          g[r * n + q] = s * grp + c * grq;
        }
        for (int r = 0; r < n; ++r) {
          const double gpr = g[p * n + r], gqr = g[q * n + r];
          g[p * n + r] = c * gpr - s * gqr;
          g[q * n + r] = s * gpr + c * gqr;
        }
      }
  std::vector<double> sv(n);
  for (int i = 0; i < n; ++i) sv[i] = std::sqrt(std::max(0.0, g[i * n + i]));
  std::sort(sv.rbegin(), sv.rend());
  return sv;
}

Tensor ns_kernel(const Tensor& u, const kernels::NewtonSchulzConfig& cfg = {}) {
  Tensor out = Tensor::empty(u.shape());
  kernels::newton_schulz(u, out, cfg);
  return out;
}

Tensor diag(const std::vector<float>& d) {
  const int64_t n = static_cast<int64_t>(d.size());
  Tensor t = Tensor::zeros({n, n});
  for (int64_t i = 0; i < n; ++i) t.data<float>()[i * n + i] = d[i];
  return t;
}

// The scalar map s <- a s + b s^3 + c s^5, `steps` times, in fp64.
double scalar_map(double s, const kernels::NewtonSchulzConfig& k = {}) {
  for (int i = 0; i < k.steps; ++i) s = k.a * s + k.b * s * s * s + k.c * s * s * s * s * s;
  return s;
}

}  // namespace

TEST(NewtonSchulz, NumericChecksFromTheNotes) {
  // fp64: NS5(diag(1, 0.5, 0.1)) has singular values [1.11874, 0.71196, 0.69884]; the
  // scalar map sends 0.1 to 0.71212 and 1.0 to 0.69644 (the notes round to 5 decimals).
  const std::vector<double> expected = {1.11874, 0.71196, 0.69884};
  const Tensor d = diag({1.0f, 0.5f, 0.1f});
  const std::vector<double> ref = singular_values(newton_schulz_fp64(to_mat(d), 3, 3, {}), 3, 3);
  const std::vector<double> got = singular_values(to_mat(ns_kernel(d)), 3, 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(ref[i], expected[i], 6e-6) << "fp64 reference, singular value " << i;
    EXPECT_NEAR(got[i], expected[i], 1e-5) << "fp32 kernel, singular value " << i;  // 5-decimal rounding + fp32
  }
  EXPECT_NEAR(scalar_map(0.1), 0.71212, 6e-6);
  EXPECT_NEAR(scalar_map(1.0), 0.69644, 6e-6);
  // The kernel follows the scalar map on each singular value once they are normalised:
  // diag(0.1, sqrt(0.99)) has unit Frobenius norm; a 1x1 matrix normalises to 1.
  const std::vector<double> sv = singular_values(to_mat(ns_kernel(diag({0.1f, std::sqrt(0.99f)}))), 2, 2);
  EXPECT_NEAR(sv[0], scalar_map(0.1), 2e-6);  // p5(0.1) = 0.71212 > p5(0.995) = 0.70207
  EXPECT_NEAR(sv[1], scalar_map(std::sqrt(0.99)), 2e-6);
  EXPECT_NEAR(ns_kernel(Tensor::full({1, 1}, 5.0)).item(), 0.69644, 6e-6);
}

TEST(NewtonSchulz, Fp32KernelMatchesFp64ReferenceOnWideTallAndSquare) {
  kernels::NewtonSchulzConfig three;
  three.steps = 3;
  for (const Shape& shape : {Shape{12, 20}, Shape{20, 12}, Shape{9, 9}, Shape{1, 16}})
    for (const kernels::NewtonSchulzConfig& cfg : {kernels::NewtonSchulzConfig{}, three}) {
      const Tensor u = random_tensor(shape, 7 + static_cast<uint32_t>(shape[0]));
      const int r = static_cast<int>(shape[0]), c = static_cast<int>(shape[1]);
      const Mat ref = newton_schulz_fp64(to_mat(u), r, c, cfg);
      const Tensor got = ns_kernel(u, cfg);
      double err = 0, scale = 0;
      const std::vector<float> g = got.to_vector();
      for (size_t i = 0; i < ref.size(); ++i) {
        err = std::max(err, std::fabs(g[i] - ref[i]));
        scale = std::max(scale, std::fabs(ref[i]));
      }
      // fp32 round-off (~1e-7) amplified by at most a = 3.4445 per iteration.
      EXPECT_LE(err / scale, 2e-5) << shape_str(shape) << " steps " << cfg.steps;
    }
}

TEST(NewtonSchulz, TallInputIsTheTransposedWideIteration) {
  const Tensor u = random_tensor({40, 16}, 11);
  const Tensor tall = ns_kernel(u);
  const Tensor wide = ns_kernel(u.transpose(0, 1).contiguous());
  // Equal up to fp32 summation order (X B vs B X), amplified at most 3.4445x per iteration.
  EXPECT_LE(max_rel_diff(tall, wide.transpose(0, 1).contiguous()), 1e-5);
  // In place (out = u) gives the same result.
  Tensor inplace = u.clone();
  kernels::newton_schulz(inplace, inplace);
  EXPECT_EQ(max_abs_diff(inplace, tall), 0.0);
  // The transposition is for cost: the Gram matrix must be the small side. A 512 x 8
  // input needs ~5 copies of itself as workspace, never a 512 x 512 Gram (1 MiB).
  const Tensor thin = random_tensor({512, 8}, 12);
  Tensor thin_out = Tensor::empty(thin.shape());
  cpu_allocator().reset_peak();
  const size_t before = cpu_allocator().stats().current_bytes;
  kernels::newton_schulz(thin, thin_out);
  EXPECT_LE(cpu_allocator().stats().peak_bytes - before, 6 * thin.nbytes());
  Tensor bad = Tensor::empty({16, 40});
  EXPECT_NE(error_of([&] { kernels::newton_schulz(u, bad); }).find("shape"), std::string::npos);
}

TEST(NewtonSchulz, SqueezesAnIllConditionedSpectrumIntoTheBand) {
  // U = Q1 diag(s) Q2^T with s from 1 down to 0.01 (condition number 100).
  const int rows = 32, cols = 24;
  auto orthonormal_columns = [](int n, int k, uint32_t stream) {  // Gram-Schmidt, [n, k]
    Mat q = to_mat(random_tensor({n, k}, stream));
    for (int j = 0; j < k; ++j) {
      for (int p = 0; p < j; ++p) {
        double d = 0;
        for (int i = 0; i < n; ++i) d += q[i * k + j] * q[i * k + p];
        for (int i = 0; i < n; ++i) q[i * k + j] -= d * q[i * k + p];
      }
      double norm = 0;
      for (int i = 0; i < n; ++i) norm += q[i * k + j] * q[i * k + j];
      for (int i = 0; i < n; ++i) q[i * k + j] /= std::sqrt(norm);
    }
    return q;
  };
  Mat q1 = orthonormal_columns(rows, cols, 21);
  const Mat q2 = orthonormal_columns(cols, cols, 22);
  for (int j = 0; j < cols; ++j)
    for (int i = 0; i < rows; ++i) q1[i * cols + j] *= std::pow(0.01, j / double(cols - 1));
  const Mat u = matmul_nt(q1, q2, rows, cols, cols, true);
  const std::vector<double> in = singular_values(u, rows, cols);
  ASSERT_NEAR(in.front() / in.back(), 100.0, 1e-6);
  Tensor ut = Tensor::from_vector(std::vector<float>(u.begin(), u.end()), {rows, cols});
  const std::vector<double> out = singular_values(to_mat(ns_kernel(ut)), rows, cols);
  // After normalisation the inputs lie in [0.0048, 0.48]; the scalar map sends that whole
  // range into [0.68, 1.16] (the notes: "roughly [0.7, 1.2]").
  for (double s : out) {
    EXPECT_GE(s, 0.675);
    EXPECT_LE(s, 1.165);
  }
  EXPECT_LT(out.front() / out.back(), 1.75);
}

TEST(Muon, TwoStepsFollowTheMathForTallAndWideParams) {
  for (const Shape& shape : {Shape{24, 8}, Shape{8, 24}}) {
    // Small weights, so fp32 rounding of W (half an ulp of |W| per step) stays far below the update.
    const Tensor w0 = random_tensor(shape, 31, -0.1f, 0.1f), g1 = random_tensor(shape, 32), g2 = random_tensor(shape, 33, -3, 3);
    for (bool nesterov : {true, false}) {
      Param p("w", w0.clone(), ParamRole::Matrix);
      MuonConfig cfg;
      cfg.nesterov = nesterov;
      cfg.weight_decay = 0.1;
      Muon opt({&p}, cfg);
      const double lr1 = 0.02, lr2 = 0.01, beta = cfg.momentum;
      const double scale = shape[0] > shape[1] ? std::sqrt(3.0) : 1.0;
      EXPECT_DOUBLE_EQ(opt.update_scale(shape[0], shape[1]), scale);
      // Expected, built from the notes in double: B1 = (1-b) G1, B2 = b B1 + (1-b) G2,
      // U = Nesterov ? (1-b) G + b B : B; W = W (1 - lr wd) - lr * scale * NS(U).
      const Mat w0m = to_mat(w0), a = to_mat(g1), b = to_mat(g2);
      Mat b1(a.size()), b2(a.size()), u1(a.size()), u2(a.size());
      for (size_t i = 0; i < a.size(); ++i) {
        b1[i] = (1 - beta) * a[i];
        b2[i] = beta * b1[i] + (1 - beta) * b[i];
        u1[i] = nesterov ? (1 - beta) * a[i] + beta * b1[i] : b1[i];
        u2[i] = nesterov ? (1 - beta) * b[i] + beta * b2[i] : b2[i];
      }
      const int r = static_cast<int>(shape[0]), c = static_cast<int>(shape[1]);
      const Mat o1 = newton_schulz_fp64(u1, r, c, {}), o2 = newton_schulz_fp64(u2, r, c, {});
      std::vector<float> w2(a.size()), buf(a.size());
      for (size_t i = 0; i < a.size(); ++i) {
        const double w1 = w0m[i] * (1 - lr1 * 0.1) - lr1 * scale * o1[i];
        w2[i] = static_cast<float>(w1 * (1 - lr2 * 0.1) - lr2 * scale * o2[i]);
        buf[i] = static_cast<float>(b2[i]);
      }
      p.grad.copy_(g1);
      opt.step(lr1);
      p.grad.copy_(g2);
      opt.step(lr2);
      const std::string what = shape_str(shape) + (nesterov ? " nesterov" : " plain");
      Tensor moved = p.value.clone(), moved_ref = Tensor::from_vector(w2, shape);
      kernels::axpy(-1.0f, w0, moved);
      kernels::axpy(-1.0f, w0, moved_ref);
      EXPECT_LE(max_rel_diff(moved, moved_ref), 1e-5) << what;  // the update, not just W
      EXPECT_LE(max_rel_diff(opt.state()[0].tensor, Tensor::from_vector(buf, shape)), 1e-6) << what;
      EXPECT_EQ(max_abs_diff(p.grad, g2), 0.0) << what << ": the gradient must be left untouched";
    }
  }
}

TEST(Muon, SumMomentumGivesTheSameUpdatesWithAScaledBuffer) {
  const Tensor w0 = random_tensor({16, 12}, 41);
  Param ema("w", w0.clone(), ParamRole::Matrix), sum("w", w0.clone(), ParamRole::Matrix);
  MuonConfig ce, cs;
  cs.momentum_form = MuonMomentum::Sum;
  Muon oe({&ema}, ce), os({&sum}, cs);
  for (int s = 0; s < 4; ++s) {
    const Tensor g = random_tensor({16, 12}, 42 + s);
    ema.grad.copy_(g);
    sum.grad.copy_(g);
    oe.step(0.02);
    os.step(0.02);
  }
  EXPECT_LE(max_rel_diff(sum.value, ema.value), 1e-6);
  Tensor scaled = oe.state()[0].tensor.clone();
  kernels::scale_inplace(scaled, static_cast<float>(1.0 / (1.0 - ce.momentum)));
  EXPECT_LE(max_rel_diff(os.state()[0].tensor, scaled), 1e-6);
}

TEST(Muon, ScaleConventionsAndDecayUseTheUnscaledLr) {
  MuonConfig cfg;
  Muon keller({}, cfg);
  EXPECT_DOUBLE_EQ(keller.update_scale(64, 48), std::sqrt(64.0 / 48.0));
  EXPECT_DOUBLE_EQ(keller.update_scale(48, 64), 1.0);
  cfg.scale = MuonScale::Moonlight;
  cfg.weight_decay = 0.5;
  Param p("w", Tensor::full({48, 64}, 1.0), ParamRole::Matrix);
  Muon moon({&p}, cfg);
  EXPECT_DOUBLE_EQ(moon.update_scale(48, 64), 0.2 * 8.0);
  EXPECT_DOUBLE_EQ(moon.update_scale(64, 48), 0.2 * 8.0);
  p.grad.zero_();  // NS(0) = 0: only the decay moves W, by lr * wd (not lr * scale * wd)
  moon.step(0.1);
  EXPECT_NEAR(p.value.item_at({3, 5}), 1.0 - 0.1 * 0.5, 1e-7);
}

TEST(Muon, StateNamesStepCountAndErrors) {
  Param a("x.weight", random_tensor({4, 3}, 51), ParamRole::Matrix);
  Param frozen("y.weight", random_tensor({4, 3}, 52), ParamRole::Matrix);
  frozen.set_trainable(false);
  Param conv("conv.weight", random_tensor({4, 2, 3, 3}, 53), ParamRole::Matrix);
  Muon opt({&a, &frozen, &conv}, MuonConfig{});
  const auto st = opt.state();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].name, "x.weight.momentum_buffer");
  EXPECT_EQ(st[1].name, "conv.weight.momentum_buffer");
  EXPECT_EQ(st[1].tensor.shape(), conv.value.shape());
  a.grad.copy_(random_tensor({4, 3}, 54));
  conv.grad.copy_(random_tensor({4, 2, 3, 3}, 55));
  const Tensor conv0 = conv.value.clone();
  opt.step(0.02);
  EXPECT_GT(max_abs_diff(conv.value, conv0), 1e-3);  // a 4-D filter is updated as [4, 18]
  EXPECT_EQ(opt.step_count(), 1);
  opt.set_step_count(7);
  EXPECT_EQ(opt.step_count(), 7);

  Param v("norm.weight", Tensor::full({4}, 1.0), ParamRole::Vector);
  EXPECT_NE(error_of([&] { Muon({&v}, MuonConfig{}); }).find("route params with fewer than 2 dims to AdamW"),
            std::string::npos);
  MuonConfig bad;
  bad.momentum = 1.0;
  EXPECT_NE(error_of([&] { bad.validate(); }).find("momentum"), std::string::npos);
  EXPECT_EQ(parse_muon_scale("moonlight"), MuonScale::Moonlight);
  EXPECT_EQ(parse_muon_momentum("sum"), MuonMomentum::Sum);
  EXPECT_NE(error_of([] { parse_muon_scale("kellr"); }).find("\"keller\""), std::string::npos);
}

namespace {

ModelConfig tiny(const char* family, bool tied) {
  ModelConfig c = std::string(family) == "gpt2" ? ModelConfig::gpt2() : ModelConfig::llama();
  c.vocab_size = 41; c.hidden_size = 16; c.num_hidden_layers = 2; c.num_attention_heads = 4;
  c.num_key_value_heads = std::string(family) == "gpt2" ? 4 : 2; c.intermediate_size = 24;
  c.max_position_embeddings = 16; c.tie_word_embeddings = tied;
  return c;
}

std::map<std::string, ParamGroup> groups_of(const std::vector<RouteEntry>& routes) {
  std::map<std::string, ParamGroup> out;
  for (const RouteEntry& r : routes) out[r.name] = r.group;
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

TEST(Routing, LlamaHiddenMatricesToMuonEmbeddingsHeadAndNormsToAdamW) {
  for (bool tied : {false, true}) {
    TransformerLM model(tiny("llama", tied));
    const auto groups = groups_of(route_params(model.params(), RoutingConfig{}));
    int matrix = 0;
    for (const auto& [name, group] : groups) {
      const bool projection = ends_with(name, "_proj.weight");  // q/k/v/o/gate/up/down
      EXPECT_EQ(group, projection ? ParamGroup::Matrix : ParamGroup::AdamW) << name;
      matrix += group == ParamGroup::Matrix;
    }
    EXPECT_EQ(matrix, 2 * 7);
    EXPECT_EQ(groups.at("model.embed_tokens.weight"), ParamGroup::AdamW);
    EXPECT_EQ(groups.at("model.norm.weight"), ParamGroup::AdamW);
    EXPECT_EQ(groups.at("model.layers.1.post_attention_layernorm.weight"), ParamGroup::AdamW);
    EXPECT_EQ(groups.count("lm_head.weight"), tied ? 0u : 1u);
    if (!tied) EXPECT_EQ(groups.at("lm_head.weight"), ParamGroup::AdamW);  // Output-role (and named a head)
  }
}

TEST(Routing, Gpt2FusedProjectionsToMuonBiasesAndPositionsToAdamW) {
  TransformerLM model(tiny("gpt2", true));
  const auto groups = groups_of(route_params(model.params(), RoutingConfig{}));
  for (const auto& [name, group] : groups) {
    const bool hidden = ends_with(name, "weight") && (name.find(".attn.") != std::string::npos ||
                                                      name.find(".mlp.") != std::string::npos);
    EXPECT_EQ(group, hidden ? ParamGroup::Matrix : ParamGroup::AdamW) << name;
  }
  EXPECT_EQ(groups.at("transformer.h.0.attn.c_attn.weight"), ParamGroup::Matrix);
  EXPECT_EQ(groups.at("transformer.wpe.weight"), ParamGroup::AdamW);
  EXPECT_EQ(groups.at("transformer.h.0.mlp.c_fc.bias"), ParamGroup::AdamW);
}

// The untied lm_head is an Output-role param: AdamW without any name pattern (COSMOS keeps it
// off its matrix branch too), decayed like a matrix so AdamW runs are unchanged.
TEST(Routing, UntiedHeadIsOutputRoleAndGoesToAdamWWithoutANamePattern) {
  TransformerLM model(tiny("llama", false));
  const Param& head = model.param("lm_head.weight");
  EXPECT_EQ(head.role, ParamRole::Output);
  EXPECT_EQ(model.param("model.embed_tokens.weight").role, ParamRole::Embedding);
  RoutingConfig no_names;
  no_names.output_heads.clear();
  const std::vector<RouteEntry> routes = route_params(model.params(), no_names);
  EXPECT_EQ(groups_of(routes).at("lm_head.weight"), ParamGroup::AdamW);
  const std::string log = format_routing(routes);
  EXPECT_NE(log.find("adamw  lm_head.weight " + shape_str(head.value.shape()) + " (output; output head)"),
            std::string::npos) << log;
  AdamWConfig adamw;
  adamw.weight_decay = 0.1;
  EXPECT_EQ(AdamW({}, adamw).decay_for(head), 0.1);
  Cosmos cosmos({}, CosmosConfig{});
  EXPECT_FALSE(cosmos.uses_matrix_branch(head));
  EXPECT_TRUE(cosmos.uses_matrix_branch(model.param("model.layers.0.mlp.up_proj.weight")));
}

TEST(Routing, OverridesFrozenParamsAndPatternErrors) {
  TransformerLM model(tiny("llama", false));
  model.param("model.layers.1.mlp.up_proj.weight").set_trainable(false);
  RoutingConfig cfg;
  cfg.force_adamw = {"model.layers.0.*"};
  cfg.force_matrix = {"lm_head.weight"};
  const std::vector<RouteEntry> routes = route_params(model.params(), cfg);
  const auto groups = groups_of(routes);
  EXPECT_EQ(groups.at("model.layers.0.self_attn.q_proj.weight"), ParamGroup::AdamW);
  EXPECT_EQ(groups.at("model.layers.1.self_attn.q_proj.weight"), ParamGroup::Matrix);
  EXPECT_EQ(groups.at("model.layers.1.mlp.up_proj.weight"), ParamGroup::Frozen);
  EXPECT_EQ(groups.at("lm_head.weight"), ParamGroup::Matrix);
  const std::string log = format_routing(routes);
  EXPECT_NE(log.find("optimizer groups: matrix 7 params"), std::string::npos) << log;  // 6 in layer 1 + head
  EXPECT_NE(log.find("adamw  model.layers.0.mlp.down_proj.weight [16, 24] (matrix; forced by 'model.layers.0.*')"),
            std::string::npos) << log;
  EXPECT_NE(log.find("frozen 1 params"), std::string::npos) << log;

  RoutingConfig both;
  both.force_adamw = {"*.q_proj.weight"};
  both.force_matrix = {"model.layers.1.*_proj.weight"};
  EXPECT_NE(error_of([&] { route_params(model.params(), both); }).find("at most one way"), std::string::npos);
  RoutingConfig typo;
  typo.force_adamw = {"model.layer.*"};
  EXPECT_NE(error_of([&] { route_params(model.params(), typo); }).find("'model.layer.*' matches no parameter"),
            std::string::npos);
  RoutingConfig vector;
  vector.force_matrix = {"model.norm.weight"};
  EXPECT_NE(error_of([&] { route_params(model.params(), vector); }).find(">= 2 dims"), std::string::npos);
}

TEST(Hybrid, StepsBothGroupsWithTheirLrsAndConcatenatesState) {
  TransformerLM model(tiny("llama", false));
  model.init_weights(3);
  const std::vector<Param*> params = model.params();
  MuonConfig muon;
  HybridConfig cfg;
  auto opt = make_muon_hybrid(params, muon, cfg);
  EXPECT_STREQ(opt->name(), "muon+adamw");
  size_t matrix = 0, adamw = 0;
  for (const RouteEntry& r : opt->routing()) (r.group == ParamGroup::Matrix ? matrix : adamw) += 1;
  const auto state = opt->state();
  ASSERT_EQ(state.size(), matrix + 2 * adamw);
  EXPECT_TRUE(ends_with(state.front().name, ".momentum_buffer"));
  EXPECT_TRUE(ends_with(state.back().name, ".exp_avg_sq"));

  // A standalone Muon on a copy of one projection must take the identical step.
  Param& q = model.param("model.layers.0.self_attn.q_proj.weight");
  Param copy("copy", q.value.clone(), ParamRole::Matrix);
  Muon alone({&copy}, muon);
  for (Param* p : params) p->grad.copy_(random_tensor(p->value.shape(), 60 + static_cast<uint32_t>(p->value.numel())));
  copy.grad.copy_(q.grad);
  const Tensor norm0 = model.param("model.norm.weight").value.clone();
  const double lr = 0.02;
  opt->step(lr);
  alone.step(lr);
  EXPECT_EQ(max_abs_diff(q.value, copy.value), 0.0);
  // AdamW's first step is lr * sign(g) per element (eps 1e-10), here with lr * 0.015.
  const Param& norm = model.param("model.norm.weight");
  for (int64_t i = 0; i < 16; ++i) {
    const double g = norm.grad.item_at({i});
    EXPECT_NEAR(norm.value.item_at({i}), norm0.item_at({i}) - lr * 0.015 * (g > 0 ? 1 : -1), 1e-7);
  }
  opt->set_step_count(9);
  EXPECT_EQ(opt->matrix_optimizer().step_count(), 9);
  EXPECT_EQ(opt->adamw().step_count(), 9);

  // The same param twice would give two state entries of one name.
  std::vector<Param*> dup = {&q, &q};
  EXPECT_NE(error_of([&] { make_muon_hybrid(dup, muon, cfg); }).find("occurs twice"), std::string::npos);
  // No matrices at all: the factory gets an empty list and the hybrid still works.
  Param v("v", Tensor::full({3}, 1.0), ParamRole::Vector);
  v.grad.fill_(1.0);
  auto vectors_only = make_muon_hybrid({&v}, muon, cfg);
  vectors_only->step(1.0);
  EXPECT_NEAR(v.value.item_at({0}), 1.0 - 0.015, 1e-6);
}
