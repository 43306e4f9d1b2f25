// TransformerBlock with hard gates (layer-skip routers, models/layer_router.h): each routed
// sub-block runs on its active rows only. Training: gather the active tokens (per sequence for
// attention, so a token-unit attention sees only its sequence's active tokens, at their real
// positions; token-local for the feed-forward), run the sub-block on the compact batch, scatter
// x + f back; backward gathers dy likewise, and dL/dg = <dy, f> per token (0 where skipped: f was
// never computed) goes to the gate. With the gate's trains_skipped() (RouterSpec::train_skipped)
// a training forward instead computes f on every token and outputs x + g f, so skipped tokens get
// dL/dg = <dy, f> too. A token-unit attention keeps skipping for real (see trains_skipped) and
// takes the skipped tokens' f from a forward-only dense probe for their dL/dg alone (see
// probes_skipped). Cached decoding: sequence
// unit decided at a row's first call and remembered in the KVCache layer's route; token unit per
// token, a skipped token writing no K/V and the layer keeping its active tokens' keys compacted
// (KVRoute::slots).
#include <algorithm>

#include "kernels/elementwise.h"
#include "kernels/route_rows.h"
#include "models/block.h"
#include "models/route_plan.h"

namespace anvil {

namespace {
// Cache slots of a routed block; children 0 norm1, 1 attention, 2 norm2, 3 feed-forward, 4 + sub
// a gate, 6 the attention on a compact batch (its own StepContext: compact positions), 7 the
// dense probe of a token-unit attention (dropped at once).
constexpr const char* kRouteGates[2] = {"attention_route_gates", "feed_forward_route_gates"};
constexpr const char* kRouteOut[2] = {"attention_route_out", "feed_forward_route_out"};
constexpr const char* kRouteDense[2] = {"attention_route_dense", "feed_forward_route_dense"};
constexpr const char* kBlockGateGrad = "block_route_dg";  // the feed-forward's dL/dg for a whole-block gate
constexpr const char* kRouteProbe = "attention_route_probe";  // f of every token, for the skipped ones' dL/dg
constexpr size_t kCompactAttention = 6, kProbeAttention = 7;

// Host f32 [M] of dL/dg per row: the row dots of dy and f.
std::vector<float> row_dots(const Tensor& dy, const Tensor& f) {
  const int64_t C = f.size(-1), M = f.numel() / C;
  Tensor out = empty_like(f, {M}, DType::F32);
  kernels::row_dot(dy.contiguous().view({M, C}), f.contiguous().view({M, C}), out);
  const Tensor host = out.to(Device::cpu());
  return std::vector<float>(host.data<float>(), host.data<float>() + M);
}

Tensor sum(const Tensor& a, const Tensor& b) {
  Tensor out = empty_like(a, a.shape());
  kernels::add(a, b, out);
  return out;
}

// out = base + g f per token for 0 / 1 gates: base plus f's active rows (the rows of a
// token-local plan), so the active tokens get exactly the real-skip path's base + f.
Tensor add_active(const RoutePlan& tokens, const Tensor& base, const Tensor& f) {
  if (tokens.all()) return sum(f, base);
  Tensor out = base.contiguous().clone();
  if (!tokens.none()) scatter_active(tokens, gather_active(tokens, f), out);
  return out;
}
}  // namespace

bool TransformerBlock::trains_skipped(int sub, const BlockGate& gate, const Cache& c) const {
  if (!gate.trains_skipped() || !c.context().router_training) return false;
  // A token-unit attention skips for real: a dense pass would let later tokens attend to the
  // skipped tokens' keys, which decoding (a skipped token writes no K/V) never does.
  return !(sub == 0 && gate.skip_unit() == GateSkip::Token);
}

bool TransformerBlock::probes_skipped(int sub, const BlockGate& gate, const Cache& c) const {
  return sub == 0 && gate.skip_unit() == GateSkip::Token && gate.trains_skipped() && c.context().router_training;
}

BlockGate* TransformerBlock::router(int sub) const {
  if (gates_[sub] && gates_[sub]->skip_unit() != GateSkip::None) return gates_[sub].get();
  if (sub == 1 && gates_[0] && gates_[0]->skips_whole_block()) return gates_[0].get();
  return nullptr;
}

Tensor TransformerBlock::sub_forward(int sub, const Tensor& n, Cache& c) {
  return sub == 0 ? attn_->forward(n, c) : ff_->forward(n, c);
}

Tensor TransformerBlock::sub_backward(int sub, const Tensor& dn, Cache& c) {
  return sub == 0 ? attn_->backward(dn, c) : ff_->backward(dn, c);
}

void TransformerBlock::count(int sub, int64_t run, int64_t total) {
  (sub == 0 ? counts_.attention_run : counts_.mlp_run) += run;
  (sub == 0 ? counts_.attention_total : counts_.mlp_total) += total;
}

Tensor TransformerBlock::routed_forward(int sub, const Tensor& x, Cache& c) {
  const Tensor n = (sub == 0 ? norm1_ : norm2_)->forward(x, c.child(sub == 0 ? 0 : 2));
  Cache& full_cache = c.child(sub == 0 ? 1 : 3);
  const int64_t tokens = x.size(0) * x.size(1);
  BlockGate* gate = router(sub);
  if (!gate) {  // the other sub-block of a routed block
    count(sub, tokens, tokens);
    Tensor f = sub_forward(sub, n, full_cache);
    kernels::add(f, x, f);
    return f;
  }
  const bool shared = sub == 1 && gate == gates_[0].get();  // the block's one decision, taken before attention
  const Tensor g = shared ? c.get(kRouteGates[0]) : gate->forward(n, c.child(4 + sub));
  c[kRouteGates[sub]] = g;
  if (trains_skipped(sub, *gate, c)) {  // straight-through: f on every token, y = x + g f
    count(sub, tokens, tokens);
    Tensor f = sub_forward(sub, n, full_cache);
    c[kRouteOut[sub]] = f;
    c[kRouteDense[sub]] = g;
    return add_active(plan_routes(g, false, x.device()), x, f);
  }
  const RoutePlan plan = plan_routes(g, sub == 0, x.device());
  count(sub, plan.active, tokens);
  if (!plan.all() && probes_skipped(sub, *gate, c)) {
    // The output skips for real; the skipped tokens' routers get <dy, f> with f from attention over
    // every token (so its keys include the other skipped tokens: an estimate used for dL/dg alone,
    // where df = g dy = 0). Not counted in routed_rows: it computes nothing the output uses.
    Cache& probe = c.child(kProbeAttention);
    c[kRouteProbe] = sub_forward(sub, n, probe);
    probe.clear();
  }
  if (plan.all()) {  // nothing to gather: exactly the unrouted computation
    Tensor f = sub_forward(sub, n, full_cache);
    c[kRouteOut[sub]] = f;
    return sum(f, x);
  }
  Tensor y = x.contiguous().clone();
  if (plan.none()) return y;
  Cache& compact_cache = sub == 0 ? c.child(kCompactAttention) : full_cache;
  if (sub == 0) compact_cache.set_context(compact_context(plan, c.context(), x.device()));
  const Tensor f = sub_forward(sub, gather_active(plan, n), compact_cache);
  c[kRouteOut[sub]] = f;
  scatter_active(plan, f, y);
  return y;
}

Tensor TransformerBlock::routed_backward(int sub, const Tensor& dy, Cache& c) {
  Module& norm = sub == 0 ? *norm1_ : *norm2_;
  Cache& norm_cache = c.child(sub == 0 ? 0 : 2);
  Cache& full_cache = c.child(sub == 0 ? 1 : 3);
  BlockGate* gate = router(sub);
  if (!gate) {
    Tensor dx = norm.backward(sub_backward(sub, dy, full_cache), norm_cache);
    kernels::add_inplace(dx, dy);
    return dx;
  }
  const Tensor g = c.get(kRouteGates[sub]);
  const int64_t B = g.size(0), T = g.size(1);
  const bool dense = c.has(kRouteDense[sub]) && c.get(kRouteDense[sub]).defined();
  const RoutePlan plan = plan_routes(g, sub == 0 && !dense, dy.device());
  std::vector<float> dg(static_cast<size_t>(B * T), 0.0f);  // dL/dg per token: 0 where f was not computed
  Tensor dn;
  if (dense) {  // dL/dg = <dy, f> on every token; df = g dy
    dg = row_dots(dy, c.get(kRouteOut[sub]));
    dn = sub_backward(sub, add_active(plan, zeros_like(dy, dy.shape()), dy), full_cache);
    c[kRouteDense[sub]] = Tensor();
  } else if (plan.all()) {
    dg = row_dots(dy, c.get(kRouteOut[sub]));
    dn = sub_backward(sub, dy, full_cache);
  } else if (!plan.none()) {
    const Tensor dyc = gather_active(plan, dy);
    dg = scatter_values(plan, row_dots(dyc, c.get(kRouteOut[sub])).data());
    const Tensor dnc = sub_backward(sub, dyc, sub == 0 ? c.child(kCompactAttention) : full_cache);
    dn = zeros_like(dy, dy.shape());
    scatter_active(plan, dnc, dn);
  }
  if (c.has(kRouteProbe) && c.get(kRouteProbe).defined()) {  // the skipped tokens' dL/dg = <dy, f_probe>
    const std::vector<float> probe = row_dots(dy, c.get(kRouteProbe));
    const Tensor gh = g.to(Device::cpu()).contiguous();
    for (size_t i = 0; i < dg.size(); ++i)
      if (gh.data<float>()[i] == 0.0f) dg[i] = probe[i];
    c[kRouteProbe] = Tensor();
  }
  c[kRouteOut[sub]] = Tensor();
  c[kRouteGates[sub]] = Tensor();
  if (sub == 1 && gate == gates_[0].get()) {
    c[kBlockGateGrad] = Tensor::from_vector(dg, {B, T});  // the attention's backward hands both to the gate
  } else {
    if (sub == 0 && c.has(kBlockGateGrad)) {
      const float* more = c.get(kBlockGateGrad).data<float>();
      for (size_t i = 0; i < dg.size(); ++i) dg[i] += more[i];
      c[kBlockGateGrad] = Tensor();
    }
    const Tensor dn_gate = gate->backward(Tensor::from_vector(dg, {B, T}), c.child(4 + sub));
    if (dn.defined()) kernels::add_inplace(dn, dn_gate);
    else dn = dn_gate;
  }
  if (!dn.defined()) {  // a whole-block gate skipped every token: nothing reaches norm2
    norm_cache.clear();
    return dy.contiguous().clone();
  }
  Tensor dx = norm.backward(dn, norm_cache);
  kernels::add_inplace(dx, dy);
  return dx;
}

// ---- KV-cached decoding ----

Tensor TransformerBlock::cached_gates(int sub, const Tensor& n, KVLayer& kv) {
  BlockGate* gate = router(sub);
  const int64_t B = n.size(0), T = n.size(1);
  if (gate->skip_unit() == GateSkip::Token || !kv.route) return gate->infer(n);
  std::vector<int8_t>& run = kv.route->run;
  ANVIL_CHECK(static_cast<int64_t>(run.size()) == B, "layer-skip router: the KV cache's route holds ", run.size(),
              " rows but the call has ", B, " — build the KVCache for this batch");
  const bool decided = std::all_of(run.begin(), run.end(), [](int8_t r) { return r >= 0; });
  Tensor g = decided ? Tensor::empty({B, T}, DType::F32) : gate->infer(n);
  float* pg = g.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    int8_t& r = run[static_cast<size_t>(b)];
    if (r < 0) r = pg[b * T] != 0.0f ? 1 : 0;  // the row's first call (its prefill) decides for good
    std::fill(pg + b * T, pg + (b + 1) * T, static_cast<float>(r));
  }
  return g;
}

namespace {
// Row b of kv as a one-row layer (its buffers, length and positions; no route).
KVLayer row_layer(const KVLayer& kv, int64_t b) {
  KVLayer one{kv.k.slice(0, b, b + 1), kv.v.slice(0, b, b + 1), nullptr, nullptr};
  if (kv.rows) {
    auto rows = std::make_shared<KVRows>();
    rows->lengths = {kv.rows->lengths[static_cast<size_t>(b)]};
    if (kv.rows->positions.defined()) rows->positions = kv.rows->positions.slice(0, b, b + 1).contiguous();
    rows->tree = kv.rows->tree;
    one.rows = rows;
  }
  return one;
}
}  // namespace

Tensor TransformerBlock::cached_attention(const Tensor& x, const Tensor& n, const Tensor& g, KVLayer& kv,
                                          int64_t start_pos) {
  const int64_t B = x.size(0), T = x.size(1);
  const RoutePlan plan = plan_routes(g, true, x.device());
  count(0, plan.active, B * T);
  const bool token_unit = router(0)->skip_unit() == GateSkip::Token;
  if (!token_unit) {
    if (plan.all()) return sum(attn_->forward_cached(n, kv, start_pos), x);
    Tensor y = x.contiguous().clone();
    for (int64_t b = 0; b < B; ++b) {  // the rows that run, one at a time: each keeps its own slots
      if (g.data<float>()[b * T] == 0.0f) continue;
      KVLayer one = row_layer(kv, b);
      Tensor yb = y.slice(0, b, b + 1);
      kernels::add_inplace(yb, attn_->forward_cached(n.slice(0, b, b + 1).contiguous(), one, start_pos));
    }
    return y;
  }
  // Token unit: the layer's own compacted entries per row (KVRoute::slots).
  ANVIL_CHECK(kv.route && kv.rows, "layer-skip router (token unit): decode through TransformerLM::forward_cached — "
              "a hand-built KV layer has no per-layer token state");
  ANVIL_CHECK(!kv.rows->tree.defined(), "layer-skip router (token unit): draft trees are not supported (the layer "
              "holds only its active tokens' keys) — verify with a chain");
  std::vector<std::vector<int32_t>>& slots = kv.route->slots;
  const float* pg = g.data<float>();
  std::vector<int64_t> active(static_cast<size_t>(B), 0);
  bool same_count = true, dense = true;  // every row runs equally many tokens; no row ever skipped one
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) active[static_cast<size_t>(b)] += pg[b * T + t] != 0.0f;
    same_count = same_count && active[static_cast<size_t>(b)] == active[0];
    dense = dense && static_cast<int64_t>(slots[static_cast<size_t>(b)].size()) == kv.rows->lengths[static_cast<size_t>(b)];
  }
  auto remember = [&]() {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        if (pg[b * T + t] != 0.0f)
          slots[static_cast<size_t>(b)].push_back(static_cast<int32_t>(kv.rows->lengths[static_cast<size_t>(b)] + t));
  };
  if (plan.all() && dense) {  // entries == slots: the unrouted call
    Tensor y = sum(attn_->forward_cached(n, kv, start_pos), x);
    remember();
    return y;
  }
  Tensor y = x.contiguous().clone();
  if (plan.none()) return y;
  const Tensor nc = gather_active(plan, n);  // [Bc, Tc, hidden], the rows with an active token
  const Tensor positions = compact_positions(plan, kv.rows->step_positions);  // their real positions
  Tensor f = zeros_like(nc, nc.shape());
  std::vector<int64_t> entries;  // per compact row: the layer's filled entries of its sequence
  for (int64_t r = 0; r < plan.rows; ++r)
    entries.push_back(static_cast<int64_t>(slots[static_cast<size_t>(plan.index[r * plan.cols] / T)].size()));
  auto layer_view = [&](int64_t first, int64_t count, int64_t width) {
    const int64_t b0 = plan.index[first * plan.cols] / T;
    KVLayer view{kv.k, kv.v, nullptr, nullptr};
    auto rows = std::make_shared<KVRows>();
    rows->lengths.assign(entries.begin() + first, entries.begin() + first + count);
    rows->positions = positions.slice(0, first, first + count).slice(1, 0, width).contiguous().to(x.device());
    if (count == 1) {
      view.k = kv.k.slice(0, b0, b0 + 1);
      view.v = kv.v.slice(0, b0, b0 + 1);
    }
    view.rows = rows;
    return view;
  };
  if (same_count && plan.rows == B) {  // one call: every row appends the same number of keys
    KVLayer view = layer_view(0, B, plan.cols);
    f = attn_->forward_cached(nc, view, start_pos);
  } else {
    for (int64_t r = 0; r < plan.rows; ++r) {
      const int64_t m = active[static_cast<size_t>(plan.index[r * plan.cols] / T)];
      KVLayer view = layer_view(r, 1, m);
      Tensor fr = f.slice(0, r, r + 1).slice(1, 0, m);
      fr.copy_(attn_->forward_cached(nc.slice(0, r, r + 1).slice(1, 0, m).contiguous(), view, start_pos));
    }
  }
  remember();
  scatter_active(plan, f, y);
  return y;
}

Tensor TransformerBlock::routed_forward_cached(const Tensor& x, KVLayer& kv, int64_t start_pos) {
  const Tensor n1 = norm1_->infer(x);
  Tensor g0, h;
  if (router(0)) {
    g0 = cached_gates(0, n1, kv);
    h = cached_attention(x, n1, g0, kv, start_pos);
  } else {
    count(0, x.size(0) * x.size(1), x.size(0) * x.size(1));
    h = sum(attn_->forward_cached(n1, kv, start_pos), x);
  }
  const Tensor n2 = norm2_->infer(h);
  BlockGate* gate = router(1);
  const int64_t tokens = h.size(0) * h.size(1);
  const Tensor g1 = !gate ? Tensor() : gate == gates_[0].get() ? g0 : cached_gates(1, n2, kv);
  const RoutePlan plan = g1.defined() ? plan_routes(g1, false, h.device()) : RoutePlan{};
  if (!g1.defined() || plan.all()) {
    count(1, tokens, tokens);
    return sum(ff_->infer(n2), h);
  }
  count(1, plan.active, tokens);
  Tensor y = h.contiguous().clone();
  if (!plan.none()) scatter_active(plan, ff_->infer(gather_active(plan, n2)), y);
  return y;
}

}  // namespace anvil
