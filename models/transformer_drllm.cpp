// TransformerLM's Dr.LLM layer steps (models/drllm_router.h): a routed layer reads its router's
// decision (or the forced StepContext::layer_actions) per sequence and runs its block 0, 1 or 2
// times on exactly the rows that need it (models/drllm_actions.h).
#include "models/drllm_actions.h"
#include "models/transformer.h"

namespace anvil {

namespace {
bool all_execute(const std::vector<int32_t>& actions) {
  for (int32_t a : actions)
    if (a != static_cast<int32_t>(BlockAction::Execute)) return false;
  return true;
}
}  // namespace

Tensor TransformerLM::drllm_layer(size_t i, const Tensor& x, Cache& c) {
  const int64_t layer = first_layer_ + static_cast<int64_t>(i);
  const StepContext& ctx = c.context();
  DrLLMRouter* router = drllm_ ? drllm_->at(layer) : nullptr;
  const bool forced = ctx.layer_actions.defined();
  if (!router && !forced) return blocks_[i]->forward(x, c.child(1 + i));
  ANVIL_CHECK(!sequence_, "Dr.LLM block actions are per sequence and need whole sequences — build the model without "
              "sequence parallelism (parallel.sp: 1)");
  const int64_t B = x.size(0);
  std::vector<int32_t> actions(static_cast<size_t>(B), static_cast<int32_t>(BlockAction::Execute));
  if (router) {
    Tensor means = drllm_windowed_means(x, drllm_->windows());
    if (!forced) actions = drllm_actions(router->infer(means));
    if (StepContext* mutable_ctx = c.mutable_context()) mutable_ctx->drllm_inputs.push_back({layer, std::move(means)});
  }
  if (forced) {
    const Tensor& a = ctx.layer_actions;
    ANVIL_CHECK(a.device().is_cpu() && a.dtype() == DType::I32 && a.dim() == 2 && a.size(0) == B &&
                    a.size(1) == config_.num_hidden_layers,
                "StepContext::layer_actions must be host i32 [batch, num_layers] = [", B, ", ",
                config_.num_hidden_layers, "], got ", a.describe());
    const Tensor ac = a.contiguous();
    for (int64_t b = 0; b < B; ++b) actions[static_cast<size_t>(b)] = ac.data<int32_t>()[b * a.size(1) + layer];
  }
  if (router)
    if (StepContext* mutable_ctx = c.mutable_context()) {  // capacity: block passes per routed (layer, sequence)
      for (int32_t a : actions) mutable_ctx->router_stats.gate_sum += a;
      mutable_ctx->router_stats.units += static_cast<double>(B);
    }
  if (all_execute(actions)) return blocks_[i]->forward(x, c.child(1 + i));  // the backbone's own path
  c.child(1 + i)[kDrLLMActed] = Tensor::zeros({1});
  return forward_block_actions(*blocks_[i], x, actions, ctx);
}

Tensor TransformerLM::drllm_layer_cached(size_t i, const Tensor& x, KVCache& kv, int64_t start) {
  const int64_t layer = first_layer_ + static_cast<int64_t>(i);
  DrLLMRouter* router = drllm_->at(layer);
  if (!router) return blocks_[i]->forward_cached(x, kv.layer(layer), start);
  const int64_t B = x.size(0);
  std::vector<int32_t> actions(static_cast<size_t>(B));
  bool undecided = false;
  for (int64_t b = 0; b < B; ++b) undecided = undecided || kv.block_action(b, layer) < 0;
  if (undecided) {  // a row's first call (its prefill) decides for the whole sequence
    const std::vector<int32_t> decided = drllm_actions(router->infer(drllm_windowed_means(x, drllm_->windows())));
    for (int64_t b = 0; b < B; ++b)
      if (kv.block_action(b, layer) < 0) kv.set_block_action(b, layer, decided[static_cast<size_t>(b)]);
  }
  bool repeats = false;
  for (int64_t b = 0; b < B; ++b) {
    actions[static_cast<size_t>(b)] = kv.block_action(b, layer);
    repeats = repeats || actions[static_cast<size_t>(b)] == static_cast<int32_t>(BlockAction::Repeat);
  }
  if (all_execute(actions)) return blocks_[i]->forward_cached(x, kv.layer(layer), start);
  return forward_block_actions_cached(*blocks_[i], x, actions, kv.layer(layer),
                                      repeats ? &kv.repeat_layer(layer) : nullptr, start);
}

}  // namespace anvil
