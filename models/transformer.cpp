#include "models/transformer.h"

#include <cmath>

#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/loss.h"
#include "kernels/matmul.h"
#include "models/layout_checks.h"
#include "parallel/data_parallel.h"

namespace anvil {

namespace {
const ModelConfig& validated(const ModelConfig& c, const ModelLayout& layout) {
  c.validate();
  ANVIL_CHECK(layout.stages >= 1 && layout.stage >= 0 && layout.stage < layout.stages, "TransformerLM: pipeline stage ",
              layout.stage, " of ", layout.stages, " is out of range — stage must be in [0, stages)");
  if (layout.tp || layout.sp || layout.stages > 1) {
    GridDims dims;
    dims.tp = layout.tp ? layout.tp->size() : 1;
    dims.sp = layout.sp ? layout.sp->size() : 1;
    dims.pp = layout.stages;
    validate_layout(dims, c);
  }
  return c;
}
// Cache children of the model: 0 embedding, 1..L blocks, L+1 final norm, L+2 head.

}  // namespace

TransformerLM::TransformerLM(const ModelConfig& config, const ModelLayout& layout, const RouterSpec* routers)
    : config_(validated(config, layout)),
      layout_(layout),
      tp_(layout.tp),
      vocab_start_(vocab_shard_start(layout.tp, config.vocab_size)) {
  Communicator* tp = layout.tp;
  const Family& family = family_of(config);
  const bool first = is_first_stage(), last = is_last_stage();
  if (first || (last && config.tie_word_embeddings))
    wte_.emplace(family.embed_tokens, config.vocab_size, config.hidden_size, tp);
  if (family.positions == PositionKind::Learned && first)
    wpe_.emplace(family.embed_positions, config.max_position_embeddings, config.hidden_size);
  if (family.positions == PositionKind::Rotary)
    rope_ = make_rope_tables(config.resolved_head_dim(), config.max_position_embeddings, config.rope_theta,
                             config.rope_scaling);
  if (layout.sp) sequence_ = std::make_shared<SequenceParallelContext>(SequenceParallelContext{layout.sp, {}});
  const int64_t per_stage = config.num_hidden_layers / layout.stages;
  first_layer_ = layout.stage * per_stage;
  BlockSpec spec = block_spec(config);
  if (routers) {
    check_router_spec(*routers, config.num_hidden_layers);
    routers_ = *routers;
    if (routers->kind == RouterKind::MindSkip) spec.gate = mindskip_gates(*routers);
    if (routers->kind == RouterKind::DrLLM)  // Dr.LLM: block-level routers (models/transformer_drllm.cpp)
      drllm_ = std::make_unique<DrLLMRouters>(routers->layers, first_layer_, per_stage, config.hidden_size,
                                              routers->hidden, routers->windows,
                                              [&](int64_t i) { return family.layer(i); });
  }
  for (int64_t i = first_layer_; i < first_layer_ + per_stage; ++i)
    blocks_.push_back(std::make_unique<TransformerBlock>(
        spec, BlockContext{family.layer(i), config_, family, rope_, tp, sequence_, i}));
  if (last) {
    norm_f_ = make_norm(family.final_norm, config);
    if (config.tie_word_embeddings) head_.emplace(wte_->weight, tp);
    else head_.emplace(family.head, config.hidden_size, config.vocab_size, false, tp).weight().role = ParamRole::Output;
  }
}

void TransformerLM::to(Device device, DType compute) {
  move_params(params(), device, compute);
  if (rope_) {  // the kernels read the tables in f32 on the activations' device
    rope_->cos = rope_->cos.to(device);
    rope_->sin = rope_->sin.to(device);
  }
  device_ = device;
  compute_ = compute;
}

void TransformerLM::init_weights(uint64_t seed) {
  const float std = static_cast<float>(config_.initializer_range);
  const float residual_std =
      family_of(config_).scale_residual_init ? std / std::sqrt(2.0f * config_.num_hidden_layers) : std;
  init_params(params(), seed, std, residual_std);
}

Tensor TransformerLM::forward(const Tensor& ids, Cache& c) {
  ANVIL_CHECK(layout_.stages == 1, "TransformerLM::forward runs the whole model, but this rank holds pipeline stage ",
              layout_.stage, " of ", layout_.stages, " — run it through forward_stage (PipelineExecutor)");
  return forward_head(forward_stage(ids, c), head_cache(c));
}

Tensor TransformerLM::forward_hidden(const Tensor& ids, Cache& c, HiddenTaps* taps) {
  ANVIL_CHECK(layout_.stages == 1, "TransformerLM::forward_hidden runs the whole trunk, but this rank holds pipeline "
              "stage ", layout_.stage, " of ", layout_.stages, " — run it through forward_stage (PipelineExecutor)");
  return forward_stage(ids, c, taps);
}

void TransformerLM::backward_hidden(const Tensor& dhidden, Cache& c) {
  ANVIL_CHECK(layout_.stages == 1, "TransformerLM::backward_hidden runs the whole trunk, but this rank holds pipeline "
              "stage ", layout_.stage, " of ", layout_.stages, " — run it through backward_stage (PipelineExecutor)");
  backward_stage(dhidden, c);
}

Tensor TransformerLM::forward_head(const Tensor& hidden, Cache& c) {
  ANVIL_CHECK(is_last_stage(), "forward_head: pipeline stage ", layout_.stage, " of ", layout_.stages,
              " has no head — only the last stage holds the LM head");
  check_dtype(hidden, compute_, "the head's input hidden state");
  ANVIL_CHECK(hidden.dim() == 3 && hidden.size(2) == config_.hidden_size, "forward_head: the hidden state must be "
              "[batch, seq_len, ", config_.hidden_size, "], got ", hidden.describe());
  return head_->forward(hidden, c);
}

Tensor TransformerLM::backward_head(const Tensor& dlogits, Cache& c) {
  ANVIL_CHECK(is_last_stage(), "backward_head: pipeline stage ", layout_.stage, " of ", layout_.stages,
              " has no head — only the last stage holds the LM head");
  Tensor dx = head_->backward(dlogits, c);
  c.clear();
  report_grads_ready({&*head_});  // the tied head lists no params: its weight is reported with the embedding
  return dx;
}

Param& TransformerLM::head_weight() {
  ANVIL_CHECK(is_last_stage(), "head_weight: pipeline stage ", layout_.stage, " of ", layout_.stages,
              " has no head — only the last stage holds the LM head");
  return head_->weight();
}

CrossEntropyLoss TransformerLM::cross_entropy() const {
  return CrossEntropyLoss(tp_, vocab_start_, config_.vocab_size, layout_.sp);
}

void TransformerLM::check_cache(const KVCache& kv, int64_t B, const char* where) const {
  ANVIL_CHECK(tp_ == nullptr, where, ": KV-cached decoding is not tensor-parallel yet — generate with a "
              "model built without a tp communicator (load the full checkpoint on one rank)");
  ANVIL_CHECK(layout_.sp == nullptr, where, ": KV-cached decoding is not sequence-parallel — each new token "
              "attends to the whole cache, so there is no sequence to split; generate with a model built without an "
              "sp communicator (load the full checkpoint on one rank)");
  ANVIL_CHECK(layout_.stages == 1, where, ": KV-cached decoding is not pipeline-parallel yet — generate with "
              "a model built without pipeline stages (load the full checkpoint on one rank)");
  ANVIL_CHECK(kv.num_layers() == config_.num_hidden_layers && kv.num_kv_heads() == config_.num_key_value_heads &&
                  kv.head_dim() == config_.resolved_head_dim(),
              where, ": the KVCache has ", kv.num_layers(), " layers of ", kv.num_kv_heads(), " KV heads x ",
              kv.head_dim(), " but the model has ", config_.num_hidden_layers, " x ", config_.num_key_value_heads,
              " x ", config_.resolved_head_dim(), " — build the KVCache from this model's config");
  ANVIL_CHECK(kv.batch() == B, where, ": the input has batch ", B, " but the KVCache was built for batch ", kv.batch());
}

Tensor TransformerLM::blocks_cached(Tensor x, KVCache& kv, int64_t start, HiddenTaps* taps, int64_t stop,
                                   int64_t first) {
  if (taps) taps->states.assign(taps->layers.size(), Tensor());
  const size_t count = stop < 0 ? blocks_.size() : static_cast<size_t>(stop);
  for (size_t i = static_cast<size_t>(first); i < count; ++i) {
    x = drllm_ ? drllm_layer_cached(i, x, kv, start)  // Dr.LLM: skip / execute / repeat per row
               : blocks_[i]->forward_cached(x, kv.layer(static_cast<int64_t>(i)), start);
    if (taps)
      for (size_t k = 0; k < taps->layers.size(); ++k)
        if (taps->layers[k] == static_cast<int64_t>(i)) taps->states[k] = x;
  }
  kv.advance(x.size(1));
  return x;
}

Tensor TransformerLM::forward_cached(const Tensor& ids, KVCache& kv, bool last_position_only, HiddenTaps* taps,
                                     int64_t exit_layer) {
  Tensor x = forward_cached_hidden(ids, kv, taps, exit_layer);
  const int64_t T = x.size(1);
  if (last_position_only && T > 1) x = x.slice(1, T - 1, T).contiguous();
  return infer_head(x);
}

Tensor TransformerLM::forward_cached_hidden(const Tensor& ids, KVCache& kv, HiddenTaps* taps, int64_t exit_layer) {
  check_dtype(ids, DType::I32, "token ids");
  const int64_t L = config_.num_hidden_layers;
  ANVIL_CHECK(exit_layer == -1 || (exit_layer >= 1 && exit_layer <= L), "forward_cached: exit_layer = ", exit_layer,
              " is outside [1, ", L, "] — give the number of leading layers to run (-1: all of them)");
  ANVIL_CHECK(ids.dim() == 2 && ids.size(1) >= 1, "forward_cached: token ids must be [batch, T_new] with T_new >= 1, got ",
              ids.describe());
  const int64_t B = ids.size(0), T = ids.size(1);
  const kernels::DecodeMatmulScope few_rows;  // a few token rows per weight: read each weight once
  check_cache(kv, B, "forward_cached");
  if (taps)
    for (int64_t layer : taps->layers)
      ANVIL_CHECK(layer >= 0 && layer < config_.num_hidden_layers, "hidden taps: layer ", layer,
                  " does not exist — the model has layers 0 .. ", config_.num_hidden_layers - 1);
  // Each row's positions: its next slots, or the ids given with KVCache::set_positions.
  const Tensor positions = kv.begin_step(T, config_.max_position_embeddings, device());
  const bool common_run = kv.step_is_common_run();
  const int64_t start = common_run ? kv.length() : 0;  // the run's first slot (the layers read kv's rows)
  Tensor x = masks_ ? masks_->infer(ids) : wte_->infer(ids);
  if (wpe_ && common_run) {
    const Tensor rows = wpe_->weight.value.slice(0, start, start + T);
    for (int64_t b = 0; b < B; ++b) {
      Tensor row = x.select(0, b);
      kernels::add_inplace(row, rows);
    }
  } else if (wpe_) {
    add_position_embeddings(x, positions.to(device()));
  }
  x = blocks_cached(std::move(x), kv, start, taps, exit_layer);
  return norm_f_->infer(x);
}

std::vector<Param*> TransformerLM::router_params() {
  std::vector<Param*> out;
  for (auto& b : blocks_) b->collect_router_params(out);
  if (drllm_) drllm_->collect_params(out);
  return out;
}

RoutedRows TransformerLM::routed_rows() const {
  RoutedRows total;
  for (const auto& b : blocks_) total += b->routed_rows();
  return total;
}

MindSkipRouter* TransformerLM::mindskip_router(int64_t layer) {
  const int64_t i = layer - first_layer_;
  if (i < 0 || i >= num_stage_layers()) return nullptr;
  for (SubBlock sub : {SubBlock::Attention, SubBlock::FeedForward})
    if (auto* r = dynamic_cast<MindSkipRouter*>(blocks_[static_cast<size_t>(i)]->gate(sub))) return r;
  return nullptr;
}

void TransformerLM::reset_routed_rows() {
  for (auto& b : blocks_) b->reset_routed_rows();
}

Tensor TransformerLM::infer_head(const Tensor& hidden) {
  ANVIL_CHECK(is_last_stage(), "infer_head: only the last pipeline stage holds the LM head");
  const kernels::DecodeMatmulScope few_rows;
  return head_->infer(hidden);
}

Tensor TransformerLM::forward_blocks_cached(const Tensor& x, KVCache& kv, int64_t first_layer) {
  check_dtype(x, compute_, "forward_blocks_cached' input");
  ANVIL_CHECK(x.dim() == 3 && x.size(1) >= 1 && x.size(2) == config_.hidden_size, "forward_blocks_cached: the input "
              "must be [batch, T_new >= 1, ", config_.hidden_size, "], got ", x.describe());
  check_cache(kv, x.size(0), "forward_blocks_cached");
  ANVIL_CHECK(first_layer >= 0 && first_layer < config_.num_hidden_layers, "forward_blocks_cached: first layer ",
              first_layer, " is outside [0, ", config_.num_hidden_layers - 1, "]");
  const kernels::DecodeMatmulScope few_rows;  // as forward_cached
  kv.begin_step(x.size(1), config_.max_position_embeddings, device());
  return blocks_cached(x, kv, kv.step_is_common_run() ? kv.length() : 0, nullptr, -1, first_layer);
}

Tensor TransformerLM::backward(const Tensor& dlogits, Cache& c) {
  ANVIL_CHECK(layout_.stages == 1, "TransformerLM::backward runs the whole model, but this rank holds pipeline stage ",
              layout_.stage, " of ", layout_.stages, " — run it through backward_stage (PipelineExecutor)");
  Tensor dx = backward_head(dlogits, head_cache(c));
  c.clear_own();  // whatever the caller saved beside the trunk
  trunk_backward(std::move(dx), c);
  return Tensor();
}

void TransformerLM::report_grads_ready(std::initializer_list<Module*> modules) {
  if (!grad_ready_) return;
  std::vector<Param*> ready;
  for (Module* m : modules)
    if (m) m->collect_params(ready);
  grad_ready_(ready);
}

Tensor TransformerLM::trunk_backward(Tensor dx, Cache& c) {
  const size_t L = blocks_.size();
  if (is_last_stage()) {
    dx = norm_f_->backward(dx, c.child(L + 1));
    report_grads_ready({norm_f_.get()});
  }
  dx = blocks_backward(std::move(dx), c, true);
  if (!is_first_stage()) return dx;  // the previous stage's output gradient
  if (wpe_ && wpe_->weight.trainable) {
    const Tensor dx32 = dx.dtype() == DType::F32 ? dx : dx.to(DType::F32);  // grads accumulate in f32
    const Tensor& position_ids = c.context().position_ids;
    if (position_ids.defined()) {  // explicit positions: scatter-add each token's row
      kernels::embedding_backward(position_ids, dx32.view({dx.size(0) * dx.size(1), dx.size(2)}), wpe_->weight.grad);
    } else {
      const int64_t start = static_cast<int64_t>(c.child(0).get("position_start").item());  // the slice's positions
      Tensor dpos = wpe_->weight.grad.slice(0, start, start + dx.size(1));
      for (int64_t b = 0; b < dx.size(0); ++b) kernels::add_inplace(dpos, dx32.select(0, b));
    }
  }
  if (masks_) masks_->backward(dx, c.child(0));  // wte's gradient and the masks'
  else wte_->backward(dx, c.child(0));
  // Over several stages a tied embedding is final only after all_reduce_tied_embedding_grad.
  report_grads_ready({tied_over_stages() ? nullptr : &*wte_, wpe_ ? &*wpe_ : nullptr, masks_.get()});
  return Tensor();
}

Tensor TransformerLM::blocks_backward(Tensor dx, Cache& c, bool report) {
  for (size_t i = blocks_.size(); i-- > 0;) {
    ANVIL_CHECK(!c.child(1 + i).has(kDrLLMActed), "TransformerLM backward: layer ", first_layer_ + i, " ran under Dr.LLM "
                "skip/repeat actions, which save nothing for a backward (Dr.LLM trains its routers on detached inputs)");
    dx = blocks_[i]->backward(dx, c.child(1 + i));
    if (report) report_grads_ready({blocks_[i].get()});
  }
  return dx;
}

Tensor TransformerLM::forward_blocks(const Tensor& x, Cache& c) {
  ANVIL_CHECK(layout_.stages == 1 && !layout_.sp, "TransformerLM::forward_blocks runs every block on whole "
              "sequences — build the model without sp or pipeline stages (tp is fine)");
  check_dtype(x, compute_, "forward_blocks' input");
  ANVIL_CHECK(x.dim() == 3 && x.size(2) == config_.hidden_size, "forward_blocks: the input must be [batch, seq_len, ",
              config_.hidden_size, "], got ", x.describe());
  Tensor h = x;
  for (size_t i = 0; i < blocks_.size(); ++i) h = blocks_[i]->forward(h, c.child(1 + i));
  return h;
}

Tensor TransformerLM::backward_blocks(const Tensor& dy, Cache& c) { return blocks_backward(dy, c, false); }

float TransformerLM::forward_loss(const Tensor& ids, const Tensor& targets, Cache& c, int ignore_index) {
  ANVIL_CHECK(layout_.stages == 1, "TransformerLM::forward_loss runs the whole model, but this rank holds pipeline "
              "stage ", layout_.stage, " of ", layout_.stages, " — run it through forward_stage_loss (PipelineExecutor)");
  check_dtype(targets, DType::I32, "targets");
  ANVIL_CHECK(targets.shape() == ids.shape(), "targets ", targets.describe(), " must match ids ", ids.describe());
  return head_loss(forward_stage(ids, c), targets, c, ignore_index);
}

float TransformerLM::head_loss(const Tensor& hidden, const Tensor& targets, Cache& c, int ignore_index) {
  return cross_entropy().forward(forward_head(hidden, head_cache(c)), targets, c, ignore_index);
}

void TransformerLM::backward_loss(Cache& c, float loss_scale, int64_t loss_tokens) {
  ANVIL_CHECK(layout_.stages == 1, "TransformerLM::backward_loss runs the whole model, but this rank holds pipeline "
              "stage ", layout_.stage, " of ", layout_.stages,
              " — run it through backward_stage_loss (PipelineExecutor)");
  head_loss_backward(c, loss_scale, loss_tokens);
}

Tensor TransformerLM::head_loss_backward(Cache& c, float loss_scale, int64_t loss_tokens) {
  Tensor dx;
  {
    const Tensor dlogits = cross_entropy().backward(c, loss_scale, loss_tokens);  // in place over the logits
    dx = backward_head(dlogits, head_cache(c));
    c.clear_own();  // the logits and the loss's saved rows die here, with dlogits
  }
  return trunk_backward(std::move(dx), c);
}

int64_t TransformerLM::enter_sequence(int64_t local_length) {
  if (!sequence_) return 0;
  Communicator& sp = *sequence_->sp;
  const int P = sp.size();
  Tensor mine = Tensor::full({1}, static_cast<double>(local_length), DType::I64);
  Tensor lengths = Tensor::empty({P}, DType::I64);
  sp.all_gather(mine, lengths);
  const int64_t* len = lengths.data<int64_t>();
  int64_t total = 0;
  for (int r = 0; r < P; ++r) total += len[r];
  const SequencePartition part = partition_sequence(total, P);
  for (int r = 0; r < P; ++r)
    ANVIL_CHECK(len[r] == part.length(r), "sequence parallelism: sp rank ", r, " passed ", len[r],
                " positions, but the balanced split of the T = ", total, " positions the ", P,
                " sp ranks passed gives it ", part.length(r), " (positions ", part.start(r), " .. ", part.end(r) - 1,
                ") — cut each rank's ids and targets with sequence_slice(batch, sp) from the same full batch");
  sequence_->part = part;
  return part.start(sp.rank());
}

void TransformerLM::add_mask_embeddings(int64_t masks, uint64_t seed) {
  ANVIL_CHECK(!masks_, "add_mask_embeddings: the model has its ", masks_ ? masks_->masks() : 0, " mask tokens already");
  ANVIL_CHECK(!device_.is_cuda(), "add_mask_embeddings: add the mask tokens on the CPU, before TransformerLM::to");
  if (!is_first_stage()) return;  // only the embedding stage reads ids
  masks_ = std::make_unique<MaskTokenEmbedding>(*wte_, masks, config_.hidden_size, tp_);
  const float std = static_cast<float>(config_.initializer_range);
  init_params(masks_->params(), seed, std, std);
}

int32_t TransformerLM::mask_token_id(int64_t i) const {
  ANVIL_CHECK(masks_ && i >= 0 && i < masks_->masks(), "mask_token_id: mask ", i, " does not exist — the model has ",
              mask_tokens(), " mask tokens (a ParallelSpec drafter: TransformerLM::add_mask_embeddings)");
  return masks_->mask_id(i);
}

void TransformerLM::collect_params(std::vector<Param*>& out) {
  collect_own_params(out);
  for (Module* m : attached_) m->collect_params(out);
}

void TransformerLM::collect_linears(std::vector<LinearWeight*>& out) {
  for (auto& b : blocks_) b->collect_linears(out);
  if (head_) head_->collect_linears(out);
}

void TransformerLM::collect_own_params(std::vector<Param*>& out) {
  if (wte_) wte_->collect_params(out);
  if (wpe_) wpe_->collect_params(out);
  if (masks_) masks_->collect_params(out);
  for (auto& b : blocks_) b->collect_params(out);
  if (drllm_) drllm_->collect_params(out);
  if (norm_f_) norm_f_->collect_params(out);
  if (head_) head_->collect_params(out);
}

Param& TransformerLM::param(const std::string& name) {
  for (Param* p : params())
    if (p->name == name) return *p;
  ANVIL_FAIL("model has no parameter '", name, "' — names follow Hugging Face (e.g. ",
             params().front()->name, ")");
}

void TransformerLM::zero_grad() {
  for (Param* p : params()) p->zero_grad();
}

MemoryTable TransformerLM::memory_table(int64_t B, int64_t T) const {
  auto& self = const_cast<TransformerLM&>(*this);  // params() only lists them
  MemoryTable t;
  for (Param* p : self.params()) {
    t.param_bytes += p->value.nbytes() + (p->master.defined() ? p->master.nbytes() : 0);
    if (p->grad.defined()) t.grad_bytes += p->grad.nbytes();
  }
  if (rope_) t.buffer_bytes = rope_->cos.nbytes() + rope_->sin.nbytes();
  // Activations are in the compute dtype; saved statistics (norm stats, log-sum-exp, losses)
  // in f32. Under sequence parallelism token-local tensors hold the longest slice.
  const int sp = layout_.sp ? layout_.sp->size() : 1;
  ActivationDims d;
  d.batch = B;
  d.seq_len = T;
  d.tokens = B * partition_sequence(T, sp).max_length();
  d.act = dtype_size(compute_);
  d.stat = sizeof(float);
  // Each part reports what its forward saves, its input included: the first block's norm
  // holds the embedding output (or a later stage's received input), the final norm the last
  // block's output, the head the final norm's output.
  const Module* wte = wte_ ? &*wte_ : nullptr;
  const Module* wpe = wpe_ ? &*wpe_ : nullptr;
  const Module* head = head_ ? &*head_ : nullptr;
  size_t act = 0;
  for (const Module* part : {wte, wpe, static_cast<const Module*>(norm_f_.get()), head})
    if (part) act += part->activation_bytes(d);
  for (const auto& block : blocks_) act += block->activation_bytes(d);
  if (is_last_stage()) {
    const size_t V = config_.vocab_size / (tp_ ? tp_->size() : 1);
    act += d.tokens * V * d.act + 2 * d.tokens * d.stat;  // the loss keeps the logits, per-row loss and log-sum-exp
  }
  t.activation_bytes = act;
  t.workspace_bytes = d.tokens * config_.hidden_size * d.act;  // the head's input gradient made while logits live
                                                                // (other stages: the received one)
  return t;
}

}  // namespace anvil
