#include "models/drllm_actions.h"

#include "models/block.h"
#include "models/drllm_router.h"
#include "models/kv_cache.h"

namespace anvil {

namespace {
// Calls f(first, end, position) for each maximal run of consecutive row numbers in `rows`
// (ascending); `position` is the run's index within `rows`.
template <class F>
void for_each_run(const std::vector<int64_t>& rows, F f) {
  size_t i = 0;
  while (i < rows.size()) {
    size_t j = i + 1;
    while (j < rows.size() && rows[j] == rows[j - 1] + 1) ++j;
    f(rows[i], rows[j - 1] + 1, static_cast<int64_t>(i));
    i = j;
  }
}

std::vector<int64_t> rows_where(const std::vector<int32_t>& actions, int32_t at_least) {
  std::vector<int64_t> rows;
  for (size_t b = 0; b < actions.size(); ++b)
    if (actions[b] >= at_least) rows.push_back(static_cast<int64_t>(b));
  return rows;
}

void check_actions(const std::vector<int32_t>& actions, int64_t B) {
  ANVIL_CHECK(static_cast<int64_t>(actions.size()) == B, "Dr.LLM block actions: ", actions.size(),
              " actions for a batch of ", B, " rows — give one per row");
  for (size_t b = 0; b < actions.size(); ++b)
    ANVIL_CHECK(actions[b] >= 0 && actions[b] < kBlockActions, "Dr.LLM block actions: row ", b, " has action ",
                actions[b], " — actions are 0 skip, 1 execute, 2 repeat");
}
}  // namespace

Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& rows) {
  Shape shape = x.shape();
  shape[0] = static_cast<int64_t>(rows.size());
  Tensor out = empty_like(x, shape);
  for_each_run(rows, [&](int64_t b0, int64_t b1, int64_t at) {
    Tensor dst = out.slice(0, at, at + (b1 - b0));
    dst.copy_(x.slice(0, b0, b1));
  });
  return out;
}

void scatter_rows(Tensor& dst, const Tensor& src, const std::vector<int64_t>& rows) {
  ANVIL_CHECK(src.size(0) == static_cast<int64_t>(rows.size()), "scatter_rows: ", src.size(0), " source rows for ",
              rows.size(), " destination rows");
  for_each_run(rows, [&](int64_t b0, int64_t b1, int64_t at) {
    Tensor to = dst.slice(0, b0, b1);
    to.copy_(src.slice(0, at, at + (b1 - b0)));
  });
}

std::shared_ptr<StepContext> context_rows(const StepContext& ctx, const std::vector<int64_t>& rows) {
  auto out = std::make_shared<StepContext>(ctx);
  for (Tensor* t : {&out->position_ids, &out->mask.segment_ids, &out->mask.group_ids})
    if (t->defined()) *t = gather_rows(*t, rows);
  out->layer_actions = Tensor();  // read by the model's layer loop only, never by a block
  return out;
}

Tensor forward_block_actions(TransformerBlock& block, const Tensor& x, const std::vector<int32_t>& actions,
                             const StepContext& ctx) {
  const int64_t B = x.size(0);
  check_actions(actions, B);
  Tensor y = x.contiguous();
  // Pass 1 runs on every executed or repeated row, pass 2 on the repeated ones (their pass-1 output).
  for (int32_t pass = static_cast<int32_t>(BlockAction::Execute); pass <= static_cast<int32_t>(BlockAction::Repeat);
       ++pass) {
    const std::vector<int64_t> rows = rows_where(actions, pass);
    if (rows.empty()) break;
    Cache scratch;  // nothing outlives the pass
    if (static_cast<int64_t>(rows.size()) == B) {
      scratch.set_context(std::make_shared<StepContext>(ctx));
      y = block.forward(y, scratch);
    } else {
      scratch.set_context(context_rows(ctx, rows));
      const Tensor out = block.forward(gather_rows(y, rows), scratch);
      if (y.storage() == x.storage()) y = y.clone();  // never write into the caller's input
      scatter_rows(y, out, rows);
    }
  }
  return y;
}

Tensor forward_block_actions_cached(TransformerBlock& block, const Tensor& x, const std::vector<int32_t>& actions,
                                    KVLayer& kv, KVLayer* repeat_kv, int64_t start) {
  const int64_t B = x.size(0);
  check_actions(actions, B);
  Tensor y;
  int64_t b0 = 0;
  while (b0 < B) {
    int64_t b1 = b0 + 1;
    while (b1 < B && actions[static_cast<size_t>(b1)] == actions[static_cast<size_t>(b0)]) ++b1;
    const int32_t action = actions[static_cast<size_t>(b0)];
    ANVIL_CHECK(action != static_cast<int32_t>(BlockAction::Repeat) || repeat_kv, "Dr.LLM: a repeated layer needs "
                "its repeat pass's KV layer (KVCache::repeat_layer)");
    // Views of rows b0 .. b1 - 1 of the layer's K/V and of the rows' lengths and positions.
    auto view = [&](KVLayer& layer) {
      KVLayer sub{layer.k.slice(0, b0, b1), layer.v.slice(0, b0, b1), nullptr};
      if (layer.rows) {
        auto rows = std::make_shared<KVRows>();
        rows->lengths.assign(layer.rows->lengths.begin() + b0, layer.rows->lengths.begin() + b1);
        if (layer.rows->positions.defined()) rows->positions = layer.rows->positions.slice(0, b0, b1);
        rows->tree = layer.rows->tree;
        sub.rows = std::move(rows);
      }
      return sub;
    };
    const bool whole = b0 == 0 && b1 == B;
    Tensor out = whole ? x : x.slice(0, b0, b1).contiguous();
    if (action >= static_cast<int32_t>(BlockAction::Execute)) {
      KVLayer first = whole ? kv : view(kv);
      out = block.forward_cached(out, first, start);
    }
    if (action == static_cast<int32_t>(BlockAction::Repeat)) {
      KVLayer second = whole ? *repeat_kv : view(*repeat_kv);
      out = block.forward_cached(out, second, start);
    }
    if (whole) return out;
    if (!y.defined()) y = empty_like(x, x.shape());
    Tensor dst = y.slice(0, b0, b1);
    dst.copy_(out);
    b0 = b1;
  }
  return y;
}

}  // namespace anvil
