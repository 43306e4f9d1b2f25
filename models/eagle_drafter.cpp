#include "models/eagle_drafter.h"

#include <algorithm>
#include <cmath>

#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/matmul.h"
#include "parallel/tensor_parallel.h"

namespace anvil {

namespace {

// One block of the target's shape. The RoPE kernels take at most max_positions slots per
// sequence, and step s's packed sequence holds (s + 1) * T slots (positions stay < T): the
// body's tables are kMaxTrainSteps times the target's.
ModelConfig body_config(const ModelConfig& target) {
  ModelConfig c = target;
  c.num_hidden_layers = 1;
  c.max_position_embeddings = target.max_position_embeddings * EagleDrafter::kMaxTrainSteps;
  return c;
}

// Cache children of forward_train: 0 fc, then per step s: 1 + 3s input_proj, 2 + 3s the
// block (with its own step context), 3 + 3s the final norm.
size_t proj_slot(int64_t s) { return 1 + 3 * static_cast<size_t>(s); }
size_t block_slot(int64_t s) { return 2 + 3 * static_cast<size_t>(s); }
size_t norm_slot(int64_t s) { return 3 + 3 * static_cast<size_t>(s); }

// The drafting-group context of step s's packed sequence (steps 0..s, T columns each): step j
// of column t is mask j of anchor t (slot t) at position t + j, clamped to the window's last
// position (only padding columns reach past it).
std::shared_ptr<StepContext> packed_context(int64_t B, int64_t T, int64_t s, Device device) {
  const int64_t n = (s + 1) * T;
  std::vector<int32_t> groups(B * n), positions(B * n);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j <= s; ++j)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t slot = b * n + j * T + t;
        groups[slot] = j == 0 ? -1 : static_cast<int32_t>(t);
        positions[slot] = static_cast<int32_t>(std::min(t + j, T - 1));
      }
  auto ctx = std::make_shared<StepContext>();
  ctx->mask.group_ids = Tensor::from_vector(groups, {B, n});
  ctx->position_ids = Tensor::from_vector(positions, {B, n});
  ctx->to(device);
  return ctx;
}

}  // namespace

std::vector<int64_t> EagleDrafter::default_layers(int64_t num_layers) {
  return {std::min<int64_t>(1, num_layers - 1), num_layers / 2, std::max<int64_t>(num_layers - 2, 0)};
}

EagleDrafter::EagleDrafter(TransformerLM& target, std::vector<int64_t> layers)
    : target_(target),
      layers_(std::move(layers)),
      fc_("eagle.fc", 3 * target.config().hidden_size, target.config().hidden_size, false),
      input_proj_("eagle.input_proj", 2 * target.config().hidden_size, target.config().hidden_size, false) {
  const ModelConfig& config = target.config();
  ANVIL_CHECK(target.layout().stages == 1 && !target.sequence_parallel(),
              "EAGLE drafter: the target is split over sp or pipeline stages, which the EAGLE drafter does not "
              "support yet — run distill.drafter: eagle with parallel.sp = parallel.pp = 1 (dp and tp work)");
  ANVIL_CHECK(layers_.size() == 3, "distill.eagle_layers: the EAGLE drafter fuses exactly three target layers (low, "
              "middle, high), got ", layers_.size(), " — list three layer indices or leave it empty for {1, L/2, L-2}");
  for (int64_t layer : layers_)
    ANVIL_CHECK(layer >= 0 && layer < config.num_hidden_layers, "distill.eagle_layers: layer ", layer,
                " is a drafter kind the target cannot serve — the target has layers 0 .. ",
                config.num_hidden_layers - 1, "; choose indices in that range");
  ModelLayout layout;
  layout.tp = target.tensor_parallel();  // the block, embedding and head split like the target's
  body_ = std::make_unique<TransformerLM>(body_config(config), layout);
  body_->attach(fc_);
  body_->attach(input_proj_);
  share_target_weights();
}

void EagleDrafter::share_target_weights() {
  const Family& family = family_of(target_.config());
  std::vector<std::string> shared = {std::string(family.embed_tokens) + ".weight"};
  if (!target_.config().tie_word_embeddings) shared.push_back(std::string(family.head) + ".weight");
  for (const std::string& name : shared) {
    Param& mine = body_->param(name);
    mine.set_trainable(false);
    mine.value = target_.param(name).value;  // the same storage: frozen, never stepped
  }
  shared_ = shared;
  if (family.embed_positions) {  // learned positions: unused (the target's features carry them), frozen
    const std::string name = std::string(family.embed_positions) + ".weight";
    body_->param(name).set_trainable(false);
    shared_.push_back(name);
  }
}

std::vector<Param*> EagleDrafter::own_params() {
  std::vector<Param*> own;
  for (Param* p : body_->params())
    if (std::find(shared_.begin(), shared_.end(), p->name) == shared_.end()) own.push_back(p);
  return own;
}

void EagleDrafter::init_weights(uint64_t seed) {
  // TransformerLM::init_weights' rule, on the own params only (the shared tables are the target's).
  const ModelConfig& c = body_->config();
  const float std = static_cast<float>(c.initializer_range);
  const float residual_std = family_of(c).scale_residual_init ? std / std::sqrt(2.0f * c.num_hidden_layers) : std;
  init_params(own_params(), seed, std, residual_std);
}

Tensor EagleDrafter::concat_last(const Tensor& a, const Tensor& b) const {
  Shape shape = a.shape();
  const int64_t na = a.size(-1), nb = b.size(-1);
  shape.back() = na + nb;
  Tensor out = empty_like(a, shape);
  out.slice(static_cast<int>(shape.size()) - 1, 0, na).copy_(a);
  out.slice(static_cast<int>(shape.size()) - 1, na, na + nb).copy_(b);
  return out;
}

Tensor EagleDrafter::step_input(const Tensor& tokens, const Tensor& feature, Cache* c) {
  const Tensor& table = target_.param(family_of(target_.config()).embed_tokens + std::string(".weight")).value;
  Tensor embedded = empty_like(table, {tokens.numel(), table.size(1)});
  if (Communicator* tp = target_.tensor_parallel()) {  // vocab-parallel: each row from the rank holding it
    kernels::embedding_shard_forward(tokens.contiguous(), table, target_.vocab_start(), embedded);
    ReduceFromTensorParallelRegion::forward(tp, embedded);
  } else {
    kernels::embedding_forward(tokens.contiguous(), table, embedded);
  }
  const Tensor x = concat_last(embedded.view(feature.shape()), feature);
  return c ? input_proj_.forward(x, *c) : input_proj_.infer(x);
}

Tensor EagleDrafter::fuse(const std::vector<Tensor>& taps) {
  ANVIL_CHECK(taps.size() == 3, "EAGLE drafter: fuse takes the three tapped layers' states, got ", taps.size());
  const kernels::DecodeMatmulScope few_rows;  // decoding fuses the gamma + 1 positions a verification confirmed
  return fc_.infer(concat_last(concat_last(taps[0], taps[1]), taps[2]));
}

Tensor EagleDrafter::step_labels(const Tensor& targets, int64_t steps, int ignore_index) {
  const Tensor host = targets.to(Device::cpu()).contiguous();
  const int64_t B = host.size(0), T = host.size(1);
  std::vector<int32_t> out(B * steps * T, ignore_index);
  const int32_t* src = host.data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < steps; ++s)
      for (int64_t t = 0; t + 1 + s < T; ++t) out[(b * steps + s) * T + t] = src[b * T + t + 1 + s];
  return Tensor::from_vector(out, {B, steps * T}).to(targets.device());
}

Tensor EagleDrafter::step_rows(const Tensor& rows, int64_t steps) {
  const int64_t T = rows.size(1);
  Shape shape = rows.shape();
  shape[1] = steps * T;
  Tensor out = Tensor::zeros(shape, rows.dtype(), rows.device());
  for (int64_t s = 0; s < steps && s + 1 < T; ++s)
    out.slice(1, s * T, s * T + T - 1 - s).copy_(rows.slice(1, 1 + s, T));
  return out;
}

Tensor EagleDrafter::forward_train(const Tensor& ids, const std::vector<Tensor>& taps, int64_t steps, Cache& c) {
  check_dtype(ids, DType::I32, "EAGLE drafter token ids");
  ANVIL_CHECK(steps >= 1 && steps <= kMaxTrainSteps, "distill.ttt_steps must be in [1, ", kMaxTrainSteps, "], got ",
              steps);
  ANVIL_CHECK(ids.dim() == 2 && taps.size() == 3, "EAGLE drafter: forward_train takes ids [B, T] and the three "
              "tapped states, got ids ", ids.describe(), " and ", taps.size(), " states");
  const int64_t B = ids.size(0), T = ids.size(1), h = body_->config().hidden_size;
  for (const Tensor& tap : taps)
    ANVIL_CHECK(tap.dim() == 3 && tap.size(0) == B && tap.size(1) == T && tap.size(2) == h,
                "EAGLE drafter: a tapped state is ", tap.describe(), " but ids are ", ids.describe());
  // Step s reads token x_{t+1+s} at column t (0: padding past the window).
  const Tensor host_ids = ids.to(Device::cpu()).contiguous();
  auto step_tokens = [&](int64_t s) {
    std::vector<int32_t> tok(B * T, 0);
    const int32_t* src = host_ids.data<int32_t>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t + 1 + s < T; ++t) tok[b * T + t] = src[b * T + t + 1 + s];
    return Tensor::from_vector(tok, {B, T}).to(ids.device());
  };
  Tensor feature = fc_.forward(concat_last(concat_last(taps[0], taps[1]), taps[2]), c.child(0));
  std::vector<Tensor> inputs;  // u of steps 0..s
  Tensor normed = Tensor::empty({B, steps * T, h}, feature.dtype(), feature.device());
  for (int64_t s = 0; s < steps; ++s) {
    inputs.push_back(step_input(step_tokens(s), feature, &c.child(proj_slot(s))));
    Cache& block = c.child(block_slot(s));
    Tensor out;
    if (s == 0) {
      out = body_->forward_blocks(inputs[0], block);
    } else {
      Tensor packed = Tensor::empty({B, (s + 1) * T, h}, feature.dtype(), feature.device());
      for (int64_t j = 0; j <= s; ++j) packed.slice(1, j * T, (j + 1) * T).copy_(inputs[j]);
      block.set_context(packed_context(B, T, s, ids.device()));
      out = body_->forward_blocks(packed, block).slice(1, s * T, (s + 1) * T).contiguous();
    }
    feature = out;  // the next step reads the drafter's own pre-norm output
    normed.slice(1, s * T, (s + 1) * T).copy_(body_->final_norm().forward(out, c.child(norm_slot(s))));
  }
  c["shape"] = Tensor::from_vector(std::vector<int32_t>{static_cast<int32_t>(steps), static_cast<int32_t>(T)}, {2});
  return normed;
}

void EagleDrafter::backward_train(const Tensor& dnormed, Cache& c) {
  const Tensor& shape = c.get("shape");
  const int64_t steps = shape.data<int32_t>()[0], T = shape.data<int32_t>()[1];
  const int64_t B = dnormed.size(0), h = body_->config().hidden_size;
  ANVIL_CHECK(dnormed.dim() == 3 && dnormed.size(1) == steps * T && dnormed.size(2) == h,
              "EAGLE drafter: backward_train takes [B, ", steps * T, ", ", h, "], got ", dnormed.describe());
  std::vector<Tensor> dinputs(steps);  // gradients of each step's u, summed over the packed forwards that read it
  for (int64_t s = 0; s < steps; ++s) dinputs[s] = Tensor::zeros({B, T, h}, dnormed.dtype(), dnormed.device());
  Tensor dfeature_next;  // from step s + 1's input_proj: the gradient of step s's pre-norm output
  for (int64_t s = steps - 1; s >= 0; --s) {
    Tensor dout =
        body_->final_norm().backward(dnormed.slice(1, s * T, (s + 1) * T).contiguous(), c.child(norm_slot(s)));
    if (dfeature_next.defined()) kernels::add_inplace(dout, dfeature_next);
    Tensor dpacked = dout;
    if (s > 0) {
      dpacked = Tensor::zeros({B, (s + 1) * T, h}, dout.dtype(), dout.device());
      dpacked.slice(1, s * T, (s + 1) * T).copy_(dout);
    }
    const Tensor dx = body_->backward_blocks(dpacked, c.child(block_slot(s)));
    for (int64_t j = 0; j <= s; ++j) {
      const Tensor part = dx.slice(1, j * T, (j + 1) * T).contiguous();
      kernels::add_inplace(dinputs[j], part);
    }
    // Every forward that reads u_s (steps s .. steps-1) is done: back through input_proj.
    const Tensor dcat = input_proj_.backward(dinputs[s], c.child(proj_slot(s)));
    dfeature_next = dcat.slice(2, h, 2 * h).contiguous();  // the token embedding is frozen
  }
  fc_.backward(dfeature_next, c.child(0));  // the taps are the frozen target's
  c.clear();
}

Tensor EagleDrafter::forward_cached(const Tensor& tokens, const Tensor& features, KVCache& kv) {
  const kernels::DecodeMatmulScope few_rows;  // input_proj of a few decoding rows, as the blocks after it
  return body_->forward_blocks_cached(step_input(tokens, features, nullptr), kv);
}

Tensor EagleDrafter::logits(const Tensor& hidden) {
  const kernels::DecodeMatmulScope few_rows;
  Cache scratch;
  return body_->forward_head(body_->final_norm().infer(hidden), scratch);
}

}  // namespace anvil
