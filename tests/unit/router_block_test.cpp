// MindSkip routers inside one transformer block (models/layer_router.h, models/block_routing.cpp):
// the gate at a known logit, sigma'(0) = 1/4, the straight-through gradients against finite
// differences of the surrogate loss, a token-unit attention against an explicit attention over
// the active tokens, a routed stack of blocks against the naive soft-gated computation, and the
// row gather / scatter kernels; router.train_skipped (every unit computed in training, x + g f)
// against the real-skip output and the naive soft gate whose skipped units keep <dy, f>.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "kernels/elementwise.h"
#include "kernels/route_rows.h"
#include "models/block.h"
#include "models/layer_router.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

ModelConfig config() {
  ModelConfig c = spec_llama(2);
  c.hidden_size = 16;
  c.intermediate_size = 24;
  return c;
}

// A block of layer `layer` with a MindSkip router of `scope` / `unit` (random backbone, zero router).
struct RoutedBlock {
  ModelConfig c = config();
  std::shared_ptr<RopeTables> rope = make_rope_tables(c.resolved_head_dim(), c.max_position_embeddings, 10000.0);
  BlockSpec spec = block_spec(c);
  BlockContext ctx{"model.layers.0", c, family_of(c), rope, nullptr, nullptr, 0};
  std::unique_ptr<TransformerBlock> block;
  // The block's parts once more, with its weights: the naive reference composes them.
  std::unique_ptr<Module> norm1, norm2;
  std::unique_ptr<Attention> attn;
  std::unique_ptr<FeedForward> ff;
  MindSkipRouter* router = nullptr;

  RoutedBlock(SkipScope scope, SkipUnit unit, bool train_skipped = false) {
    RouterSpec rs;
    rs.scope = scope;
    rs.unit = unit;
    rs.train_skipped = train_skipped;
    rs.layers = {0};
    spec.gate = mindskip_gates(rs);
    block = std::make_unique<TransformerBlock>(spec, ctx);
    randomize_params(block->params());
    router = dynamic_cast<MindSkipRouter*>(block->gate(scope == SkipScope::FeedForward ? SubBlock::FeedForward
                                                                                     : SubBlock::Attention));
    router->weight.value.copy_(Tensor::zeros({1, c.hidden_size}));
    norm1 = spec.norm("model.layers.0.input_layernorm", ctx);
    norm2 = spec.norm("model.layers.0.post_attention_layernorm", ctx);
    attn = spec.attention(ctx);
    ff = spec.feed_forward(ctx);
    for (Module* m : {norm1.get(), norm2.get(), static_cast<Module*>(attn.get()), static_cast<Module*>(ff.get())})
      for (Param* p : m->params())
        for (Param* q : block->params())
          if (q->name == p->name) p->value.copy_(q->value);
  }
  void zero_grads() {
    for (Param* p : block->params()) p->zero_grad();
  }
};

// Per row b of n [B, T, C]: the mean over its tokens.
std::vector<std::vector<double>> row_means(const Tensor& n) {
  const int64_t B = n.size(0), T = n.size(1), C = n.size(2);
  std::vector<std::vector<double>> out(static_cast<size_t>(B), std::vector<double>(static_cast<size_t>(C), 0.0));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < C; ++i) out[b][i] += n.data<float>()[(b * T + t) * C + i] / T;
  return out;
}

// x + s[token] * f per token (s per row when it has B entries).
Tensor plus_scaled(const Tensor& x, const Tensor& f, const std::vector<double>& s) {
  const int64_t C = x.size(-1), N = x.numel() / C, per = static_cast<int64_t>(s.size()) == N ? 1 : x.size(1);
  Tensor y = x.contiguous().clone();
  for (int64_t r = 0; r < N; ++r)
    for (int64_t i = 0; i < C; ++i) y.data<float>()[r * C + i] += static_cast<float>(s[r / per]) * f.data<float>()[r * C + i];
  return y;
}

double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

std::shared_ptr<StepContext> context_with(float capacity_grad, bool for_backward = true) {
  auto ctx = std::make_shared<StepContext>();
  ctx->router_capacity_grad = capacity_grad;
  ctx->router_training = for_backward;
  return ctx;
}

}  // namespace

TEST(RouterBlock, LogitMinusOneSkipsAttentionOnly) {
  RoutedBlock rb(SkipScope::Attention, SkipUnit::Sequence);
  const Tensor x = random_tensor({2, 5, 16}, 3);
  const Tensor n = rb.norm1->infer(x);
  // w = -xbar0 / |xbar0|^2: w . xbar0 = -1 for row 0.
  const auto xbar = row_means(n);
  double sq = 0;
  for (double v : xbar[0]) sq += v * v;
  for (int64_t i = 0; i < 16; ++i) rb.router->weight.value.data<float>()[i] = static_cast<float>(-xbar[0][i] / sq);
  const Tensor r = rb.router->probabilities(n);
  EXPECT_NEAR(r.data<float>()[0], 0.2689414, 1e-5);
  EXPECT_EQ(rb.router->infer(n).data<float>()[0], 0.0f);
  const bool row1_runs = r.data<float>()[1] >= 0.5f;
  Cache cache;
  cache.set_context(context_with(0));
  const Tensor y = rb.block->forward(x, cache);
  // Row 0: h = x, then the MLP; row 1 as its own decision says.
  const Tensor h = plus_scaled(x, rb.attn->infer(n), {0.0, row1_runs ? 1.0 : 0.0});
  const Tensor want = plus_scaled(h, rb.ff->infer(rb.norm2->infer(h)), {1.0, 1.0});
  EXPECT_LE(max_abs_diff(y, want), 1e-6);
  EXPECT_EQ(cache.context().router_stats.units, 2.0);
  EXPECT_EQ(cache.context().router_stats.gate_sum, row1_runs ? 1.0 : 0.0);
  const RoutedRows rows = rb.block->routed_rows();
  EXPECT_EQ(rows.attention_total, 10);
  EXPECT_EQ(rows.attention_run, row1_runs ? 5 : 0);
  EXPECT_EQ(rows.mlp_run, 10);
}

TEST(RouterBlock, ZeroWeightGivesSigmaPrimeQuarter) {
  RoutedBlock rb(SkipScope::Attention, SkipUnit::Sequence);
  const Tensor x = random_tensor({2, 5, 16}, 4), dy = random_tensor({2, 5, 16}, 5);
  Cache cache;
  cache.set_context(context_with(0));
  rb.zero_grads();
  rb.block->forward(x, cache);
  rb.block->backward(dy, cache);
  // dL/dg_b = sum_t <dL/dh_bt, f_bt>, dL/dh = dy + the MLP path; r = 1/2, sigma' = 1/4.
  const Tensor n = rb.norm1->infer(x), f = rb.attn->infer(n);
  const Tensor h = plus_scaled(x, f, {1.0, 1.0});
  Cache mlp;
  const Tensor n2 = rb.norm2->forward(h, mlp.child(0));
  rb.ff->forward(n2, mlp.child(1));
  Tensor dh = rb.norm2->backward(rb.ff->backward(dy, mlp.child(1)), mlp.child(0));
  kernels::add_inplace(dh, dy);
  const auto xbar = row_means(n);
  std::vector<double> want(16, 0.0);
  for (int64_t b = 0; b < 2; ++b) {
    const double dg = dot(dh.slice(0, b, b + 1).contiguous(), f.slice(0, b, b + 1).contiguous());
    for (int64_t i = 0; i < 16; ++i) want[i] += 0.25 * dg * xbar[b][i];
  }
  for (int64_t i = 0; i < 16; ++i)
    EXPECT_NEAR(rb.router->weight.grad.data<float>()[i], want[i], 1e-4 * (1 + std::fabs(want[i]))) << i;
}

namespace {
// The loss whose gradient the straight-through estimator gives, with the decisions g fixed:
// <R, y> + cap * sum_u g^_u, y = the block with g^_u = g_u + r_u(x, w) - r0_u multiplying f on
// the units that run (skipped units: f is not computed, nothing depends on r but the capacity).
double surrogate(RoutedBlock& rb, SkipScope scope, const Tensor& x, const Tensor& R, const std::vector<float>& g,
                 const std::vector<double>& r0, float cap) {
  const float* w = rb.router->weight.value.data<float>();
  auto gates = [&](const Tensor& n, bool per_row) {
    const int64_t B = n.size(0), T = n.size(1), C = n.size(2);
    std::vector<double> s(static_cast<size_t>(per_row ? B : B * T));
    double penalty = 0;
    for (size_t u = 0; u < s.size(); ++u) {
      const int64_t tokens = per_row ? T : 1;
      double z = 0;
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t i = 0; i < C; ++i) z += w[i] * n.data<float>()[(u * tokens + t) * C + i] / tokens;
      const double ghat = g[u] + sigmoid(z) - r0[u];
      penalty += cap * ghat;
      s[u] = g[u] ? ghat : 0.0;
    }
    return std::make_pair(s, penalty);
  };
  const Tensor n1 = rb.norm1->infer(x);
  double penalty = 0;
  std::vector<double> s(static_cast<size_t>(x.size(0)), 1.0);  // the attention's scale (block scope: both)
  if (scope != SkipScope::FeedForward) std::tie(s, penalty) = gates(n1, true);
  const Tensor h = plus_scaled(x, rb.attn->infer(n1), s);
  const Tensor n2 = rb.norm2->infer(h);
  if (scope == SkipScope::Attention) s.assign(s.size(), 1.0);
  if (scope == SkipScope::FeedForward) std::tie(s, penalty) = gates(n2, false);
  return dot(plus_scaled(h, rb.ff->infer(n2), s), R) + penalty;
}
}  // namespace

TEST(RouterBlock, StraightThroughGradientsMatchFiniteDifferences) {
  struct Case {
    SkipScope scope;
    SkipUnit unit;
  };
  for (const Case k : {Case{SkipScope::Attention, SkipUnit::Sequence}, Case{SkipScope::FeedForward, SkipUnit::Token},
                       Case{SkipScope::Block, SkipUnit::Sequence}}) {
    RoutedBlock rb(k.scope, k.unit);
    rb.router->weight.value.copy_(random_tensor({1, 16}, 9, -2.0f, 2.0f));
    Tensor x = random_tensor({3, 4, 16}, 6);
    const Tensor R = random_tensor({3, 4, 16}, 7);
    const float cap = 0.3f;
    // The decisions and r at the base point, then held fixed.
    Tensor n = k.scope != SkipScope::FeedForward ? rb.norm1->infer(x)
                                               : rb.norm2->infer(plus_scaled(x, rb.attn->infer(rb.norm1->infer(x)),
                                                                             {1.0, 1.0, 1.0}));
    const Tensor r = rb.router->probabilities(n);
    std::vector<double> r0(r.data<float>(), r.data<float>() + r.numel());
    std::vector<float> g;
    for (double v : r0) g.push_back(v >= 0.5 ? 1.0f : 0.0f);
    if (k.unit == SkipUnit::Sequence) g = {1.0f, 0.0f, 1.0f};  // both kinds of row, whatever r says
    rb.router->forced = g;
    Cache cache;
    cache.set_context(context_with(cap));
    rb.zero_grads();
    rb.block->forward(x, cache);
    const Tensor dx = rb.block->backward(R, cache);
    auto loss = [&]() { return surrogate(rb, k.scope, x, R, g, r0, cap); };
    const Tensor num_dw = finite_difference_grad(rb.router->weight.value, loss);
    // dL/dx along random directions v: (L(x + e v) - L(x - e v)) / 2e against <dx, v>.
    for (uint32_t dir = 0; dir < 3; ++dir) {
      const Tensor v = random_tensor(x.shape(), 50 + dir);
      const Tensor x0 = x.clone();
      const double e = 1e-3;
      kernels::axpy(static_cast<float>(e), v, x);
      const double up = loss();
      x.copy_(x0);
      kernels::axpy(static_cast<float>(-e), v, x);
      const double down = loss();
      x.copy_(x0);
      const double numeric = (up - down) / (2 * e), analytic = dot(dx, v);
      EXPECT_NEAR(analytic, numeric, 1e-2 * std::fabs(numeric) + 1e-3) << skip_scope_name(k.scope) << " direction " << dir;
    }
    EXPECT_GT(kernels::max_abs(num_dw), 1e-3);
    EXPECT_LE(max_abs_diff(rb.router->weight.grad, num_dw) / kernels::max_abs(num_dw), 2e-2) << skip_scope_name(k.scope);
  }
}

TEST(RouterBlock, TokenUnitSkippedTokensAreAbsentFromTheKeys) {
  RoutedBlock rb(SkipScope::Attention, SkipUnit::Token);
  const int64_t B = 2, T = 6;
  rb.router->forced = {1, 0, 1, 1, 0, 1,  //
                       0, 1, 1, 0, 0, 1};  // row 1 shorter: the compact batch pads it
  Tensor x = random_tensor({B, T, 16}, 11);
  Cache cache;
  cache.set_context(context_with(0));
  const Tensor y = rb.block->forward(x, cache);
  // The reference: per sequence, attention over its active tokens alone at their real positions.
  const Tensor n = rb.norm1->infer(x);
  Tensor h = x.clone();
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int32_t> idx;
    for (int64_t t = 0; t < T; ++t)
      if (rb.router->forced[b * T + t] != 0.0f) idx.push_back(static_cast<int32_t>(t));
    const int64_t m = static_cast<int64_t>(idx.size());
    Tensor na = Tensor::empty({1, m, 16});
    for (int64_t i = 0; i < m; ++i) na.select(1, i).copy_(n.select(0, b).select(0, idx[i]).view({1, 16}));
    auto ctx = std::make_shared<StepContext>();
    ctx->position_ids = Tensor::from_vector(idx, {1, m});
    Cache ref;
    ref.set_context(ctx);
    const Tensor fa = rb.attn->forward(na, ref);
    for (int64_t i = 0; i < m; ++i) {
      Tensor row = h.select(0, b).select(0, idx[i]);
      kernels::add_inplace(row, fa.select(1, i).contiguous().view({16}));
    }
  }
  const Tensor want = plus_scaled(h, rb.ff->infer(rb.norm2->infer(h)), {1.0, 1.0});
  EXPECT_LE(max_abs_diff(y, want), 1e-5);
  EXPECT_EQ(rb.block->routed_rows().attention_run, 7);
  // A skipped token's hidden state reaches no other token at this layer's attention.
  x.select(0, 0).select(0, 1).copy_(random_tensor({16}, 12));
  Cache again;
  again.set_context(context_with(0));
  const Tensor y2 = rb.block->forward(x, again);
  for (int64_t t : {0, 2, 3}) {  // the active tokens before and after it (the MLP is token-local)
    EXPECT_LE(max_abs_diff(y2.select(0, 0).select(0, t).contiguous(), y.select(0, 0).select(0, t).contiguous()), 0.0);
  }
}

namespace {
// The naive reference of a router: a soft gate that computes everything and scales f by the
// (forced) decision g, the sub-block's gradient <dy, f> taken with the f of skipped units set to
// 0 (real skipping) or kept (train_skipped: f was computed for every unit); its own copy of the sub-block's norm gives xbar (the straight-through gradient reaches x).
class NaiveRouterGate : public BlockGate {
 public:
  NaiveRouterGate(std::unique_ptr<Module> norm, const std::string& name, int64_t hidden, bool per_row,
                  std::vector<float> g, bool train_skipped)
      : weight(name, Tensor::zeros({1, hidden}), ParamRole::Vector, Init::Zeros),
        norm_(std::move(norm)), per_row_(per_row), g_(std::move(g)), train_skipped_(train_skipped) {}
  Tensor forward(const Tensor& x, Cache& c) override {
    const Tensor n = norm_->forward(x, c.child(0));
    const int64_t B = n.size(0), T = n.size(1), C = n.size(2), per = per_row_ ? T : 1;
    r_.assign(g_.size(), 0.0);
    for (size_t u = 0; u < g_.size(); ++u) {
      double z = 0;
      for (int64_t t = 0; t < per; ++t)
        for (int64_t i = 0; i < C; ++i) z += weight.value.data<float>()[i] * n.data<float>()[(u * per + t) * C + i] / per;
      r_[u] = sigmoid(z);
    }
    c["n"] = n;
    Tensor w = Tensor::empty({B, T});
    for (int64_t i = 0; i < B * T; ++i) w.data<float>()[i] = g_[static_cast<size_t>(i / per)];
    return w;
  }
  Tensor backward(const Tensor& dw, Cache& c) override {
    const Tensor n = c.get("n");
    const int64_t T = n.size(1), C = n.size(2), per = per_row_ ? T : 1;
    Tensor dn = Tensor::zeros(n.shape());
    for (size_t u = 0; u < g_.size(); ++u) {
      double dg = 0;
      for (int64_t t = 0; t < per; ++t)  // real skipping: a skipped unit's f counts as 0
        dg += dw.data<float>()[u * per + t] * (train_skipped_ ? 1.0f : g_[u]);
      const double dz = dg * r_[u] * (1 - r_[u]);
      for (int64_t t = 0; t < per; ++t)
        for (int64_t i = 0; i < C; ++i) {
          const int64_t e = (u * per + t) * C + i;
          weight.grad.data<float>()[i] += static_cast<float>(dz * n.data<float>()[e] / per);
          dn.data<float>()[e] = static_cast<float>(dz * weight.value.data<float>()[i] / per);
        }
    }
    return norm_->backward(dn, c.child(0));
  }
  void collect_params(std::vector<Param*>& out) override { out.push_back(&weight); }
  size_t activation_bytes(const ActivationDims&) const override { return 0; }
  Module& norm() { return *norm_; }
  Param weight;

 private:
  std::unique_ptr<Module> norm_;
  bool per_row_;
  std::vector<float> g_;
  bool train_skipped_;
  std::vector<double> r_;
};

Param* find_param(Module& m, const std::string& name) {
  for (Param* p : m.params())
    if (p->name == name) return p;
  return nullptr;
}
}  // namespace

TEST(RouterBlock, RoutedStackMatchesNaiveSoftGates) {
  struct Case {
    SkipScope scope;
    SkipUnit unit;
  };
  const int64_t B = 4, T = 6;
  for (const bool train_skipped : {false, true})
  for (const Case k : {Case{SkipScope::Attention, SkipUnit::Sequence}, Case{SkipScope::FeedForward, SkipUnit::Sequence},
                       Case{SkipScope::FeedForward, SkipUnit::Token}}) {
    const ModelConfig c = config();
    auto rope = make_rope_tables(c.resolved_head_dim(), c.max_position_embeddings, 10000.0);
    const Family& fam = family_of(c);
    const bool per_row = k.unit == SkipUnit::Sequence;
    const int sub = k.scope == SkipScope::Attention ? 0 : 1;
    std::vector<float> g = per_row ? std::vector<float>{1, 0, 0, 1} : std::vector<float>(B * T, 0.0f);
    if (!per_row)
      for (int64_t i = 0; i < B * T; i += 2) g[static_cast<size_t>(i + (i / T) % 2)] = 1.0f;  // half, staggered
    RouterSpec rs;
    rs.scope = k.scope;
    rs.unit = k.unit;
    rs.layers = {0, 1};
    rs.train_skipped = train_skipped;
    std::vector<std::unique_ptr<TransformerBlock>> routed, naive;
    std::vector<NaiveRouterGate*> naive_gates;
    for (int64_t layer : {0, 1}) {
      const BlockContext ctx{fam.layer(layer), c, fam, rope, nullptr, nullptr, layer};
      BlockSpec spec = block_spec(c);
      spec.gate = mindskip_gates(rs);
      routed.push_back(std::make_unique<TransformerBlock>(spec, ctx));
      BlockSpec soft = block_spec(c);
      soft.gate = [&, layer](const BlockContext& b, SubBlock s) -> std::unique_ptr<BlockGate> {
        if ((s == SubBlock::Attention ? 0 : 1) != sub) return nullptr;
        auto gate = std::make_unique<NaiveRouterGate>(
            soft.norm(b.prefix + "." + (sub == 0 ? fam.norm1 : fam.norm2), b), b.prefix + ".router.weight",
            c.hidden_size, per_row, g, train_skipped);
        naive_gates.push_back(gate.get());
        return gate;
      };
      naive.push_back(std::make_unique<TransformerBlock>(soft, ctx));
      randomize_params(routed.back()->params());
      for (Param* p : routed.back()->params())
        if (p->name.find("router") != std::string::npos) p->value.copy_(random_tensor(p->value.shape(), 20 + layer));
      for (Param* p : naive.back()->params()) p->value.copy_(find_param(*routed.back(), p->name)->value);
      for (Param* p : naive_gates.back()->norm().params()) p->value.copy_(find_param(*routed.back(), p->name)->value);
      dynamic_cast<MindSkipRouter*>(routed.back()->gate(sub == 0 ? SubBlock::Attention : SubBlock::FeedForward))
          ->forced = g;
    }
    const Tensor x = random_tensor({B, T, 16}, 30), dy = random_tensor({B, T, 16}, 31);
    const std::string what = std::string(skip_scope_name(k.scope)) + "/" + skip_unit_name(k.unit) +
                             (train_skipped ? " train_skipped" : "");
    // An evaluation forward (router_training false) skips for real whatever train_skipped says.
    Cache ec;
    ec.set_context(context_with(0, false));
    Tensor ye = x;
    for (int i = 0; i < 2; ++i) ye = routed[i]->forward(ye, ec.child(i));
    for (int i = 0; i < 2; ++i) {
      const RoutedRows rows = routed[i]->routed_rows();
      EXPECT_EQ(sub == 0 ? rows.attention_run : rows.mlp_run, B * T / 2) << what;
      routed[i]->reset_routed_rows();
    }
    Cache rc, nc;
    rc.set_context(context_with(0));
    Tensor yr = x, yn = x;
    for (int i = 0; i < 2; ++i) {
      yr = routed[i]->forward(yr, rc.child(i));
      yn = naive[i]->forward(yn, nc.child(i));
    }
    EXPECT_LE(max_abs_diff(yr, yn), 1e-5) << what;
    // x + 0 f: the real-skip output (f's active rows from a dense product rather than a compact one:
    // BLAS may round another row count differently, e.g. OpenBLAS on AMD)
    EXPECT_LE(max_abs_diff(yr, ye), 1e-5) << what;
    Tensor dr = dy, dn = dy;
    for (int i = 1; i >= 0; --i) {
      dr = routed[i]->backward(dr, rc.child(i));
      dn = naive[i]->backward(dn, nc.child(i));
    }
    EXPECT_LE(max_abs_diff(dr, dn), 1e-5) << what;
    for (int i = 0; i < 2; ++i) {
      for (Param* p : routed[i]->params()) {
        Tensor want = find_param(*naive[i], p->name)->grad.clone();
        if (Param* q = find_param(naive_gates[i]->norm(), p->name)) kernels::add_inplace(want, q->grad);
        EXPECT_LE(max_abs_diff(p->grad, want), 1e-5 * (1 + kernels::max_abs(want))) << what << " " << p->name;
      }
      const RoutedRows rows = routed[i]->routed_rows();
      // Half the rows computed, or all of them when training computes the skipped units too.
      EXPECT_EQ(sub == 0 ? rows.attention_run : rows.mlp_run, train_skipped ? B * T : B * T / 2) << what;
      EXPECT_EQ(sub == 0 ? rows.attention_total : rows.mlp_total, B * T) << what;
    }
  }
}

// A token-unit attention skips for real under train_skipped too (a dense pass would let later tokens
// see the skipped tokens' keys): the output is the real-skip block's, and a skipped token's dL/dg is
// <dy_h, f> with f its attention over every token (the dense probe) and dy_h the gradient at the
// attention's residual output. dL/dg enters the router linearly, so its weight gradient must be the
// real-skip one plus the router's backward of those skipped tokens' <dy_h, f>, built here from the
// block's own parts (plain attention, the token-local MLP at h = x where skipped).
TEST(RouterBlock, TrainSkippedTokenUnitAttentionProbesTheSkippedTokens) {
  RoutedBlock on(SkipScope::Attention, SkipUnit::Token, true), off(SkipScope::Attention, SkipUnit::Token, false);
  for (Param* p : off.block->params()) p->value.copy_(find_param(*on.block, p->name)->value);
  const int64_t B = 2, T = 6, C = 16;
  const Tensor w = random_tensor({1, C}, 13, -2.0f, 2.0f);
  const Tensor x = random_tensor({B, T, C}, 14), dy = random_tensor({B, T, C}, 15);
  std::vector<float> g(B * T, 1.0f);
  for (int i : {1, 3, 4, 6, 9, 11}) g[static_cast<size_t>(i)] = 0.0f;  // row 1 skips its first token too
  Tensor y[2];
  RoutedBlock* rbs[2] = {&on, &off};
  for (int i = 0; i < 2; ++i) {
    rbs[i]->router->weight.value.copy_(w);
    rbs[i]->router->forced = g;
    rbs[i]->zero_grads();
    Cache c;
    c.set_context(context_with(0));
    y[i] = rbs[i]->block->forward(x, c);
    rbs[i]->block->backward(dy, c);
  }
  EXPECT_EQ(max_abs_diff(y[0], y[1]), 0.0);
  EXPECT_EQ(on.block->routed_rows().attention_run, 6);  // the probe is not counted: the output skips
  EXPECT_EQ(off.block->routed_rows().attention_run, 6);
  // The reference dL/dg of the skipped tokens.
  Cache c1, c2, c3, c4;
  const Tensor n1 = on.norm1->forward(x, c1);
  const Tensor f = on.attn->forward(n1, c2);
  on.ff->forward(on.norm2->forward(x, c3), c4);
  Tensor dy_h = on.norm2->backward(on.ff->backward(dy, c4), c3);
  kernels::add_inplace(dy_h, dy);
  std::vector<float> delta(B * T, 0.0f);
  for (int64_t u = 0; u < B * T; ++u)
    if (g[static_cast<size_t>(u)] == 0.0f)
      delta[static_cast<size_t>(u)] = static_cast<float>(dot(dy_h.view({B * T, C}).slice(0, u, u + 1).contiguous(),
                                                             f.view({B * T, C}).slice(0, u, u + 1).contiguous()));
  const Tensor real_skip_grad = off.router->weight.grad.clone();
  off.router->weight.zero_grad();
  Cache rc;
  rc.set_context(context_with(0));
  off.router->forward(n1, rc);
  off.router->backward(Tensor::from_vector(delta, {B, T}), rc);
  Tensor want = real_skip_grad.clone();
  kernels::add_inplace(want, off.router->weight.grad);
  EXPECT_GT(kernels::max_abs(off.router->weight.grad), 1e-3) << "the skipped tokens' share is not trivial";
  EXPECT_LE(max_abs_diff(on.router->weight.grad, want), 1e-5 * (1 + kernels::max_abs(want)));
}

TEST(RouteRows, GatherPadsScatterAddsAndBadIndicesAreNamed) {
  const Tensor full = random_tensor({4, 3}, 60);
  const Tensor index = Tensor::from_vector(std::vector<int32_t>{2, -1, 0}, {3});
  Tensor out = Tensor::empty({3, 3});
  kernels::gather_rows(full, index, out);
  for (int64_t j = 0; j < 3; ++j) {
    EXPECT_EQ(out.data<float>()[j], full.data<float>()[2 * 3 + j]);
    EXPECT_EQ(out.data<float>()[3 + j], 0.0f);
    EXPECT_EQ(out.data<float>()[6 + j], full.data<float>()[j]);
  }
  Tensor target = full.clone();
  kernels::scatter_add_rows(out, index, target);
  EXPECT_EQ(target.data<float>()[2 * 3 + 1], 2 * full.data<float>()[2 * 3 + 1]);
  EXPECT_EQ(target.data<float>()[3 + 1], full.data<float>()[3 + 1]);  // row 1 took only padding
  Tensor dots = Tensor::empty({3});
  kernels::row_dot(out, out, dots);
  EXPECT_NEAR(dots.data<float>()[0], dot(full.slice(0, 2, 3).contiguous(), full.slice(0, 2, 3).contiguous()), 1e-6);
  const Tensor bad = Tensor::from_vector(std::vector<int32_t>{4, 0, 1}, {3});
  EXPECT_NE(error_of([&] { kernels::gather_rows(full, bad, out); }).find("index 4 at slot 0 is outside [-1, 4)"),
            std::string::npos);
  const Tensor twice = Tensor::from_vector(std::vector<int32_t>{1, 1, -1}, {3});
  EXPECT_NE(error_of([&] { kernels::scatter_add_rows(out, twice, target); }).find("row 1 appears twice"),
            std::string::npos);
}
