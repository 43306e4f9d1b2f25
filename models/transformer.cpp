#include "models/transformer.h"

#include <cmath>

#include "core/rng.h"
#include "kernels/elementwise.h"
#include "kernels/loss.h"
#include "kernels/matmul.h"
#include "models/layout_checks.h"
#include "parallel/data_parallel.h"

namespace anvil {

namespace {
bool is_gpt2(const ModelConfig& c) { return c.family() == ModelFamily::GPT2; }
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

// N(0, std) draws by logical element index, so a shard holds exactly its slice of the
// single-process tensor: each run of the split dim is a contiguous local block.
void fill_normal_logical(const PhiloxStream& rng, Param& p, float std) {
  if (!p.shard.sharded()) return rng.fill_normal(p.value, 0.0f, std);
  const ShardSplit& split = p.shard.single(p.name);  // initialising a multi-axis shard is not needed yet
  const Shape& shape = p.value.shape();
  const int d = split.dim;
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= shape[i];
  for (int i = d + 1; i < static_cast<int>(shape.size()); ++i) inner *= shape[i];
  const Tensor v = p.value.view({outer, shape[d], inner});
  for (int64_t o = 0; o < outer; ++o)
    for (const ShardRun& r : split.runs) {
      Tensor block = v.select(0, o).slice(0, r.local_start, r.local_start + r.length);
      rng.fill_normal(block, 0.0f, std, static_cast<uint64_t>((o * split.full_size + r.global_start) * inner));
    }
}
}  // namespace

TransformerLM::TransformerLM(const ModelConfig& config, const ModelLayout& layout)
    : config_(validated(config, layout)),
      layout_(layout),
      tp_(layout.tp),
      vocab_start_(vocab_shard_start(layout.tp, config.vocab_size)) {
  Communicator* tp = layout.tp;
  const bool gpt2 = is_gpt2(config);
  const bool first = is_first_stage(), last = is_last_stage();
  if (first || (last && config.tie_word_embeddings))
    wte_.emplace(gpt2 ? "transformer.wte" : "model.embed_tokens", config.vocab_size, config.hidden_size, tp);
  if (gpt2 && first) wpe_.emplace("transformer.wpe", config.max_position_embeddings, config.hidden_size);
  if (!gpt2) rope_ = make_rope_tables(config.resolved_head_dim(), config.max_position_embeddings, config.rope_theta,
                                     config.rope_scaling);
  if (layout.sp) sequence_ = std::make_shared<SequenceParallelContext>(SequenceParallelContext{layout.sp, {}});
  const int64_t per_stage = config.num_hidden_layers / layout.stages;
  first_layer_ = layout.stage * per_stage;
  for (int64_t i = first_layer_; i < first_layer_ + per_stage; ++i)
    blocks_.push_back(std::make_unique<TransformerBlock>(
        (gpt2 ? "transformer.h." : "model.layers.") + std::to_string(i), config, rope_, tp, sequence_));
  if (last) {
    norm_f_ = make_norm(gpt2 ? "transformer.ln_f" : "model.norm", config);
    if (config.tie_word_embeddings) head_.emplace(wte_->weight, tp);
    else head_.emplace("lm_head", config.hidden_size, config.vocab_size, false, tp).weight().role = ParamRole::Output;
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
  const float residual_std = is_gpt2(config_) ? std / std::sqrt(2.0f * config_.num_hidden_layers) : std;
  auto ends_with = [](const std::string& s, const char* suffix) {
    const std::string x(suffix);
    return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  for (Param* p : params()) {
    const PhiloxStream rng(seed, stream_id(p->name.c_str()));
    if (p->role == ParamRole::Vector) {
      // Norm weights start at 1, every bias at 0.
      p->value.fill_(ends_with(p->name, ".bias") ? 0.0 : 1.0);
    } else {
      const bool residual_proj = ends_with(p->name, "c_proj.weight");
      fill_normal_logical(rng, *p, residual_proj ? residual_std : std);
    }
  }
}

Tensor TransformerLM::forward(const Tensor& ids, Cache& c) {
  ANVIL_CHECK(layout_.stages == 1, "TransformerLM::forward runs the whole model, but this rank holds pipeline stage ",
              layout_.stage, " of ", layout_.stages, " — run it through forward_stage (PipelineExecutor)");
  return forward_stage(ids, c);  // the one stage: embeddings, every block, norm and head
}

Tensor TransformerLM::forward_cached(const Tensor& ids, KVCache& kv, bool last_position_only) {
  check_dtype(ids, DType::I32, "token ids");
  ANVIL_CHECK(ids.dim() == 2 && ids.size(1) >= 1, "forward_cached: token ids must be [batch, T_new] with T_new >= 1, got ",
              ids.describe());
  ANVIL_CHECK(tp_ == nullptr, "forward_cached: KV-cached decoding is not tensor-parallel yet — generate with a "
              "model built without a tp communicator (load the full checkpoint on one rank)");
  ANVIL_CHECK(layout_.sp == nullptr, "forward_cached: KV-cached decoding is not sequence-parallel — each new token "
              "attends to the whole cache, so there is no sequence to split; generate with a model built without an "
              "sp communicator (load the full checkpoint on one rank)");
  ANVIL_CHECK(layout_.stages == 1, "forward_cached: KV-cached decoding is not pipeline-parallel yet — generate with "
              "a model built without pipeline stages (load the full checkpoint on one rank)");
  const int64_t B = ids.size(0), T = ids.size(1);
  const int64_t start = kv.length(), end = start + T;
  ANVIL_CHECK(kv.num_layers() == config_.num_hidden_layers && kv.num_kv_heads() == config_.num_key_value_heads &&
                  kv.head_dim() == config_.resolved_head_dim(),
              "forward_cached: the KVCache has ", kv.num_layers(), " layers of ", kv.num_kv_heads(), " KV heads x ",
              kv.head_dim(), " but the model has ", config_.num_hidden_layers, " x ", config_.num_key_value_heads,
              " x ", config_.resolved_head_dim(), " — build the KVCache from this model's config");
  ANVIL_CHECK(kv.batch() == B, "forward_cached: ids ", ids.describe(), " have batch ", B,
              " but the KVCache was built for batch ", kv.batch());
  ANVIL_CHECK(end <= config_.max_position_embeddings, "forward_cached: positions ", start, " .. ", end - 1,
              " need ", end, " positions but max_position_embeddings = ", config_.max_position_embeddings,
              " — shorten the prompt or the generation");
  kv.check_room(T);
  Tensor x = wte_->infer(ids);
  if (wpe_) {
    const Tensor positions = wpe_->weight.value.slice(0, start, end);
    for (int64_t b = 0; b < B; ++b) {
      Tensor row = x.select(0, b);
      kernels::add_inplace(row, positions);
    }
  }
  for (size_t i = 0; i < blocks_.size(); ++i)
    x = blocks_[i]->forward_cached(x, kv.layer(static_cast<int64_t>(i)), start);
  kv.advance(T);
  if (last_position_only && T > 1) x = x.slice(1, T - 1, T).contiguous();
  x = norm_f_->infer(x);
  return head_->infer(x);
}

Tensor TransformerLM::backward(const Tensor& dlogits, Cache& c) {
  ANVIL_CHECK(layout_.stages == 1, "TransformerLM::backward runs the whole model, but this rank holds pipeline stage ",
              layout_.stage, " of ", layout_.stages, " — run it through backward_stage (PipelineExecutor)");
  trunk_backward(head_backward(dlogits, c), c);
  return Tensor();
}

Tensor TransformerLM::head_backward(Tensor dlogits, Cache& c) {
  Tensor dx = head_->backward(dlogits, c.child(blocks_.size() + 2));
  c.clear_own();  // logits and the head input die here (with this function's copy of dlogits)
  return dx;
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
    report_grads_ready({norm_f_.get(), &*head_});  // the tied head lists no params
  }
  for (size_t i = L; i-- > 0;) {
    dx = blocks_[i]->backward(dx, c.child(1 + i));
    report_grads_ready({blocks_[i].get()});
  }
  if (!is_first_stage()) return dx;  // the previous stage's output gradient
  if (wpe_ && wpe_->weight.trainable) {
    const int64_t start = static_cast<int64_t>(c.child(0).get("position_start").item());  // the slice's positions
    Tensor dpos = wpe_->weight.grad.slice(0, start, start + dx.size(1));
    const Tensor dx32 = dx.dtype() == DType::F32 ? dx : dx.to(DType::F32);  // grads accumulate in f32
    for (int64_t b = 0; b < dx.size(0); ++b) kernels::add_inplace(dpos, dx32.select(0, b));
  }
  wte_->backward(dx, c.child(0));
  // Over several stages a tied embedding is final only after all_reduce_tied_embedding_grad.
  report_grads_ready({tied_over_stages() ? nullptr : &*wte_, wpe_ ? &*wpe_ : nullptr});
  return Tensor();
}

float TransformerLM::forward_loss(const Tensor& ids, const Tensor& targets, Cache& c, int ignore_index) {
  check_dtype(targets, DType::I32, "targets");
  ANVIL_CHECK(targets.shape() == ids.shape(), "targets ", targets.describe(), " must match ids ", ids.describe());
  return cross_entropy_loss(forward(ids, c), targets, c, ignore_index);
}

// The mean over non-ignored targets; saves what loss_backward needs (the logits too) in c.
float TransformerLM::cross_entropy_loss(const Tensor& logits, const Tensor& targets, Cache& c, int ignore_index) {
  const int64_t N = targets.numel();
  Tensor losses = empty_like(logits, {N}, DType::F32), lse = empty_like(logits, {N}, DType::F32);
  const Tensor flat_targets = targets.contiguous().view({N});
  const int64_t count = VocabParallelCrossEntropy::forward(tp_, logits.view({N, logits.size(-1)}), vocab_start(),
                                                           config_.vocab_size, flat_targets, ignore_index, losses, lse);
  double loss_sum = kernels::sum(losses), tokens = static_cast<double>(count);
  if (sequence_) {
    // The mean over the whole sequences: every sp rank divides by the group's token count.
    const std::vector<double> group = all_reduce_sum(*layout_.sp, {loss_sum, tokens});
    loss_sum = group[0];
    tokens = group[1];
  }
  c["logits"] = logits;
  c["targets"] = flat_targets;
  c["lse"] = lse;
  c["count"] = Tensor::full({1}, tokens, DType::I64);
  c["ignore_index"] = Tensor::full({1}, ignore_index, DType::I32);
  return tokens > 0 ? static_cast<float>(loss_sum / tokens) : 0.0f;
}

void TransformerLM::backward_loss(Cache& c, float loss_scale, int64_t loss_tokens) {
  ANVIL_CHECK(layout_.stages == 1, "TransformerLM::backward_loss runs the whole model, but this rank holds pipeline "
              "stage ", layout_.stage, " of ", layout_.stages,
              " — run it through backward_stage_loss (PipelineExecutor)");
  loss_backward(c, loss_scale, loss_tokens);
}

Tensor TransformerLM::loss_backward(Cache& c, float loss_scale, int64_t loss_tokens) {
  Tensor dx;
  {
    Tensor logits = c.get("logits");
    const double count = loss_tokens >= 0 ? static_cast<double>(loss_tokens) : c.get("count").item();
    Tensor flat = logits.view({-1, logits.size(-1)});
    VocabParallelCrossEntropy::backward(tp_, flat, vocab_start(), c.get("targets"), c.get("lse"),
                                        static_cast<int>(c.get("ignore_index").item()),
                                        count > 0 ? static_cast<float>(loss_scale / count) : 0.0f, flat);  // in place
    dx = head_backward(std::move(logits), c);
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

void TransformerLM::collect_params(std::vector<Param*>& out) {
  if (wte_) wte_->collect_params(out);
  if (wpe_) wpe_->collect_params(out);
  for (auto& b : blocks_) b->collect_params(out);
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
  const ModelConfig& m = config_;
  // Activations are in the compute dtype; saved statistics (norm stats, log-sum-exp, losses) in f32.
  const size_t a = dtype_size(compute_), f = sizeof(float);
  // Per rank: under tensor parallelism heads, MLP width and logits are this rank's shard;
  // under sequence parallelism token-local tensors hold the longest slice of N tokens and
  // attention's saved tensors the head layout (all T positions of H / sp heads).
  const size_t tp = tp_ ? tp_->size() : 1, sp = layout_.sp ? layout_.sp->size() : 1;
  const size_t Tl = partition_sequence(T, static_cast<int>(sp)).max_length();
  const size_t N = B * Tl, C = m.hidden_size, V = m.vocab_size / tp, I = m.intermediate_size / tp;
  const size_t H = m.num_attention_heads / tp, Hkv = m.num_key_value_heads / tp, D = m.resolved_head_dim();
  const bool gpt2 = is_gpt2(m);
  MemoryTable t;
  for (Param* p : const_cast<TransformerLM*>(this)->params()) {
    t.param_bytes += p->value.nbytes() + (p->master.defined() ? p->master.nbytes() : 0);
    if (p->grad.defined()) t.grad_bytes += p->grad.nbytes();
  }
  if (rope_) t.buffer_bytes = rope_->cos.nbytes() + rope_->sin.nbytes();
  const size_t norm_stats = gpt2 ? 2 * N : N;  // LayerNorm keeps mean and rstd; RMSNorm only rstd
  size_t per_layer = 0, per_layer_stats = 0;
  per_layer += N * C;                              // norm1 output (attention input)
  per_layer_stats += norm_stats;                   // and its stats
  if (sp == 1) {
    per_layer += N * (H + 2 * Hkv) * D;            // q, k, v (after RoPE)
    per_layer += N * H * D;                        // attention output
    per_layer_stats += N * H;                      // and its log-sum-exp
  } else {
    const size_t all = B * T, h = H / sp, hkv = Hkv / sp;  // every position, this rank's heads
    per_layer += all * (h + 2 * hkv) * D;          // gathered q, k, v (after RoPE)
    per_layer += all * h * D;                      // attention output (head layout)
    per_layer_stats += all * h;                    // and its log-sum-exp
    per_layer += N * H * D;                        // the output back in the sequence layout (o_proj's input)
  }
  per_layer += N * C;                              // residual sum after attention
  per_layer += N * C;                              // norm2 output
  per_layer_stats += norm_stats;                   // and stats
  per_layer += (m.gated_mlp() ? 3 : 2) * N * I;    // gate, up, swiglu | pre-GELU, GELU
  per_layer += N * C;                              // block output (residual sum)
  size_t act = N * C;                              // embedding output (a later stage: the received input)
  act += blocks_.size() * per_layer;               // this stage's layers
  size_t stats = blocks_.size() * per_layer_stats;
  if (is_last_stage()) {
    act += N * C;                                  // final norm
    stats += norm_stats;
    act += N * V;                                  // logits
    stats += 2 * N;                                // per-row loss and log-sum-exp
  }
  t.activation_bytes = act * a + stats * f;
  t.workspace_bytes = N * C * a;  // the head's input gradient made while logits live (other stages: the received one)
  return t;
}

}  // namespace anvil
