// TransformerLM: a decoder-only language model of the GPT-2 or Llama family,
// with explicit forward/backward through embedding, blocks, final norm and head.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "models/block.h"
#include "models/config.h"
#include "models/drllm_router.h"
#include "models/kv_cache.h"
#include "models/layer_router.h"
#include "models/lm_loss.h"
#include "models/mask_embedding.h"

namespace anvil {

// Bytes a forward+backward step holds, summed from what each part reports (llm.c-style size tables).
struct MemoryTable {
  size_t param_bytes = 0;
  size_t grad_bytes = 0;        // trainable params only
  size_t buffer_bytes = 0;      // non-trainable tables (RoPE cos/sin)
  size_t activation_bytes = 0;  // everything forward saves, logits included
  size_t workspace_bytes = 0;   // the largest transient alive at the peak (start of backward)
  size_t total() const { return param_bytes + grad_bytes + buffer_bytes + activation_bytes + workspace_bytes; }
};

// How this rank's model is split over the process grid. All null / 1: the whole model in
// one process. Each communicator is the grid's sub-communicator for that axis.
// Hidden states of chosen layers, read during a forward (EAGLE-style drafters read three of the
// target's layers). `layers` are global layer indices; forward fills `states` in the same order
// with each layer's output [B, T, hidden] (Hugging Face's hidden_states[i + 1]), undefined for a
// layer another pipeline stage holds. The tensors are the forward's own, not copies: read them
// before the next forward.
struct HiddenTaps {
  std::vector<int64_t> layers;
  std::vector<Tensor> states;
};

struct ModelLayout {
  Communicator* tp = nullptr;  // tensor parallel: heads, MLP width and vocabulary split
  Communicator* sp = nullptr;  // Ulysses sequence parallel: each rank holds a slice of every sequence
  int stage = 0, stages = 1;   // pipeline parallel: this rank's stage of `stages` contiguous layer ranges
};

class TransformerLM : public Module {
 public:
  // With a layout.tp communicator the model is tensor-parallel over its ranks (Megatron layout):
  // vocab-parallel embedding, heads and MLP width split per block, LM head column-parallel
  // over the vocabulary (the tied head reuses the embedding shard) feeding a vocab-parallel
  // cross-entropy. Params keep their names with local shapes and ShardSpec{TP, dim}.
  // Every tp rank must pass the same ids and targets. Degrees that do not divide the model
  // (KV heads, vocabulary, intermediate size) throw validate_layout's error. Null: one device.
  //
  // With a layout.sp communicator of P ranks the model is Ulysses sequence-parallel: each sp
  // rank passes its slice of every sequence, ids [B, Tl] = positions part.start(r) .. + Tl
  // of partition_sequence(T, P) (cut it with sequence_slice(ids, *layout.sp), the targets
  // likewise). Embedding, norms, MLP, head and loss stay token-local; attention exchanges
  // q/k/v all-to-all (heads scattered, sequence gathered) and back; RoPE and GPT-2's wpe
  // use the slice's global positions. T need not divide P (balanced slices, no padding).
  // Every param's gradient is then this rank's partial sum: sum it over sp (the trainer
  // does, over ProcessGrid::data_sequence_comm() together with dp). sp must divide the
  // KV heads of each tp rank (validate_layout's error otherwise). Composes with tp.
  //
  // With layout.stages = P > 1 this rank holds pipeline stage layout.stage: layers
  // [stage*L/P, (stage+1)*L/P) under their global names (model.layers.<i>...), the embeddings
  // on stage 0, the final norm and head on stage P-1. A tied head on the last stage holds its
  // own copy of the embedding weight (same name, same init); see all_reduce_tied_embedding_grad.
  // Such a model runs through the stage entry points below (parallel/pipeline_executor.h),
  // not forward / forward_loss. P must divide the layer count (validate_layout's error).
  //
  // With `routers` (models/layer_router.h, checked by check_router_spec) the layers it names get
  // layer-skip routers: MindSkip through each block's gate slot (router.weight params, zero-init:
  // the model starts equal to the backbone). The spec is copied; router_params() lists this
  // stage's router params, routers() returns the spec (nullptr without routers).
  explicit TransformerLM(const ModelConfig& config, const ModelLayout& layout = {},
                         const RouterSpec* routers = nullptr);
  // Not movable: the tied head points at the embedding's weight.
  TransformerLM(const TransformerLM&) = delete;
  TransformerLM& operator=(const TransformerLM&) = delete;

  // Moves every param (move_params: f32 masters and `compute`-dtype values when compute is
  // bf16) and the RoPE tables to `device`; activations then follow (they are allocated like
  // their inputs), and forward takes ids on that device. Build, init_weights and load weights
  // on the CPU first (they run in f32 there), then move once.
  void to(Device device, DType compute);
  Device device() const { return device_; }
  DType compute_dtype() const { return compute_; }  // the dtype of values and activations

  // Fresh weights from Philox keyed by (seed, param name): layout-independent. Each param
  // follows the init rule its module gave it (init_params): matrices and embeddings
  // N(0, initializer_range), residual projections scaled by 1/sqrt(2 * layers) where the
  // family says so (GPT-2), norms 1, biases 0.
  void init_weights(uint64_t seed);

  // ---- The whole model (one pipeline stage): trunk, head and loss ----
  // ids: i32 [B, T] -> logits [B, T, vocab] (under tp: this rank's vocabulary shard
  // [B, T, vocab / tp], ids vocab_start() ..; gather them with GatherFromTensorParallelRegion).
  // Under sp, ids [B, Tl] are this rank's slice and the logits are those of its positions;
  // the forward first all-gathers the slice lengths over sp (T is their sum) and refuses,
  // on every sp rank alike, slices that do not follow partition_sequence.
  // forward = forward_head(forward_hidden(ids, c), c.child(head)).
  Tensor forward(const Tensor& ids, Cache& c) override;
  // dlogits: [B, T, vocab] (under tp: the shard) -> accumulates every gradient; returns an undefined tensor.
  Tensor backward(const Tensor& dlogits, Cache& c) override;

  // The trunk: embeddings, every block and the final norm. ids i32 [B, T] -> the last hidden
  // state [B, T, hidden] (after the final norm: what the LM head reads, Hugging Face's
  // hidden_states[-1]). `taps`, when given, also receives the output of chosen layers.
  Tensor forward_hidden(const Tensor& ids, Cache& c, HiddenTaps* taps = nullptr);
  // The gradient of the last hidden state -> accumulates the trunk's gradients. A caller that
  // trains only what reads the hidden state (Medusa-1's heads on a frozen trunk) stops the
  // gradient there by not calling this: dropping the Cache is enough, no trunk dx is computed.
  void backward_hidden(const Tensor& dhidden, Cache& c);
  // The LM head on a hidden state [B, T, hidden] -> logits [B, T, vocab / tp]; saves its input
  // in `c` (a cache of the caller's, for the head alone). On the last pipeline stage only.
  Tensor forward_head(const Tensor& hidden, Cache& c);
  // dlogits -> the gradient of the head's input; accumulates the head's gradient (a tied head:
  // the embedding's) and reports it ready. Clears `c`.
  Tensor backward_head(const Tensor& dlogits, Cache& c);
  // The blocks alone on given input vectors x [B, T, hidden] in compute_dtype() (Hugging Face's
  // inputs_embeds; an EAGLE drafter feeds its fused features): returns the last block's output
  // before the final norm (final_norm() applies it). Positions and mask from c.context(). One
  // stage, no sp; under tp x is replicated over the tp ranks like every block's input, and so
  // are the output and backward_blocks' dx.
  Tensor forward_blocks(const Tensor& x, Cache& c);
  // Its backward: accumulates the blocks' gradients and returns the gradient of x. Reports nothing
  // to the grad-ready callback: a caller may run it several times per micro-batch (an EAGLE
  // drafter's training-time-test steps), so the gradients are final only at the step's end, where
  // data parallelism reduces whatever was not reported (DataParallel::finish_grad_sync).
  Tensor backward_blocks(const Tensor& dy, Cache& c);
  Module& final_norm() { return *norm_f_; }
  // The weight the LM head reads, [vocab / tp, hidden]: lm_head's, or the embedding's when tied
  // (over several stages the last stage's copy). On the last pipeline stage only.
  Param& head_weight();
  // A module outside the trunk that trains with the model (an EAGLE drafter's fusion layers):
  // its params are listed after the model's (collect_params), so they are moved, initialised,
  // zeroed and stepped with them. Not owned; the caller runs it.
  void attach(Module& extra) { attached_.push_back(&extra); }
  // The loss that scores this model's logits: vocab-parallel under tp, a group mean under sp.
  CrossEntropyLoss cross_entropy() const;
  // Where a stage Cache keeps what the head and its loss save (forward_head's cache and the
  // loss's), so that state is measured and dropped with the stage's own.
  Cache& head_cache(Cache& c) { return c.child(blocks_.size() + 2); }

  // Incremental inference with a KV cache (nothing is saved for backward): ids
  // i32 [B, T_new] are positions kv.length() .. kv.length() + T_new - 1 of each
  // sequence; their keys/values are written into kv, kv.length() advances by
  // T_new, and the result is the logits [B, T_new, vocab] of those positions
  // (or [B, 1, vocab] for the last one when last_position_only, which skips the
  // head's work on a long prompt). Prefill with the prompt, then one token per step.
  // Not tensor- or sequence-parallel: throws when the model was built with a tp or sp communicator.
  // `taps`, when given, receives the outputs of its layers at the T_new positions (an EAGLE
  // drafter reads the accepted prefix's); the logits are the same either way.
  //
  // Early exit (self-speculation's draft, LayerSkip-style): exit_layer = E in [1, L] runs only
  // layers 0 .. E - 1, then the final norm and the head; only those layers' K/V are written (the
  // later layers' slots for these positions stay stale: truncate the cache before the full model
  // decodes them). -1 (the default) or L: the whole model.
  Tensor forward_cached(const Tensor& ids, KVCache& kv, bool last_position_only = false, HiddenTaps* taps = nullptr,
                        int64_t exit_layer = -1);
  // forward_cached's trunk: the final hidden states [B, T_new, hidden] (after the final norm, what
  // the LM head reads) of the new positions; infer_head turns them into logits. Medusa decoding
  // reads both: the base's logits and its heads' from the same hidden state.
  Tensor forward_cached_hidden(const Tensor& ids, KVCache& kv, HiddenTaps* taps = nullptr, int64_t exit_layer = -1);
  // The LM head on a hidden state [B, T, hidden], saving nothing (decoding).
  Tensor infer_head(const Tensor& hidden);
  // The blocks alone, cached, on given input vectors x [B, T_new, hidden] (forward_blocks' cached
  // twin): appends their keys/values to kv at the positions it gives and returns the last block's
  // outputs before the final norm.
  // first_layer > 0 runs layers first_layer .. L-1 only, x being layer first_layer - 1's output
  // (the verification half of early-exit self-speculation, eval/self_speculative.h).
  Tensor forward_blocks_cached(const Tensor& x, KVCache& kv, int64_t first_layer = 0);

  // Mean cross-entropy over targets != ignore_index (forward, then cross_entropy()); logits
  // stay in the cache. Under sp (ids and targets this rank's slices) the mean over the whole
  // sp group's tokens, the same on every sp rank and equal to one process's loss on the full sequences.
  float forward_loss(const Tensor& ids, const Tensor& targets, Cache& c, int ignore_index = -100);
  // Backward from forward_loss's mean loss times loss_scale (1/micro-batches for accumulation).
  // loss_tokens: the token count the summed loss is divided by; -1 = this micro-batch's
  // own count (under sp: the count over the sp group's slices). Data parallelism passes
  // the count over every rank's micro-batch (under sp, summed over dp x sp), so the
  // gradients summed over ranks are those of the mean over the whole global micro-batch.
  void backward_loss(Cache& c, float loss_scale = 1.0f, int64_t loss_tokens = -1);

  // ---- Pipeline stages (any layout.stages; with one stage they run the whole trunk) ----
  // models/lm_pipeline.h wraps these as the parallel/pipeline_stage.h interface.
  // Stage forward. input: the first stage's token ids i32 [B, T]; any later stage's incoming
  // hidden state [B, T, hidden] in compute_dtype() (the previous stage's output). Returns the
  // hidden state [B, T, hidden] to send on; on the last stage, after the final norm (what
  // forward_head reads). `taps` receives the chosen layers this stage holds.
  Tensor forward_stage(const Tensor& input, Cache& c, HiddenTaps* taps = nullptr);
  // Stage backward: dy is the gradient of its output (from the next stage, or on the last
  // stage of the final hidden state). Accumulates this stage's gradients; returns the gradient
  // of its input hidden state to send back, or an undefined tensor on the first stage.
  Tensor backward_stage(const Tensor& dy, Cache& c);
  // The last stage's forward_stage, head and loss (forward_loss of a stage); targets i32 [B, T].
  float forward_stage_loss(const Tensor& input, const Tensor& targets, Cache& c, int ignore_index = -100);
  // The last stage's backward from forward_stage_loss, with backward_loss's loss_scale and
  // loss_tokens; returns the gradient of the stage's input (undefined with one stage).
  Tensor backward_stage_loss(Cache& c, float loss_scale = 1.0f, int64_t loss_tokens = -1);
  bool is_first_stage() const { return layout_.stage == 0; }
  bool is_last_stage() const { return layout_.stage == layout_.stages - 1; }
  int64_t first_layer() const { return first_layer_; }  // this stage's first global layer index
  int64_t num_stage_layers() const { return static_cast<int64_t>(blocks_.size()); }

  // Tied embeddings over P > 1 stages (Megatron's embedding group): the first stage's
  // embedding and the last stage's copy, which its head reads, are one logical parameter,
  // so after the step's last backward both hold their own partial gradient. This sums the
  // two over `pp` (the grid's pipeline communicator: rank = stage) so both hold the full
  // one and, updated alike, stay identical; then reports that param to the grad-ready
  // callback. Collective between the first and last stage; a no-op on every other stage,
  // when untied, or with one stage. PipelineExecutor::step calls it once per step.
  void all_reduce_tied_embedding_grad(Communicator& pp);
  // The last stage's copy of a tied embedding (nullptr elsewhere): the first stage's
  // weight is authoritative, so checkpoints save stage 0's and load into both.
  Param* tied_embedding_copy();

  // Called during backward each time a group of params' gradients is final for this
  // pass: the head and final norm, then each block from the last to the first, then
  // the embeddings (a tied embedding is final only here). On a pipeline stage: the
  // stage's own params in the same order; a tied embedding over P > 1 stages is reported
  // by all_reduce_tied_embedding_grad instead (only then is it final). Data parallelism
  // uses it to start a bucket's reduction while backward continues; the model knows
  // nothing of who listens. Empty (the default) = no calls.
  using GradReadyCallback = std::function<void(const std::vector<Param*>& ready)>;
  void set_grad_ready_callback(GradReadyCallback callback) { grad_ready_ = std::move(callback); }

  // ParallelSpec drafters (models/mask_embedding.h): adds `masks` learned mask tokens, ids
  // vocab_size .. vocab_size + masks - 1 (mask_token_id), initialised like the embeddings from
  // (seed, name). Call once, on the CPU before to() and before loading weights; only the first
  // pipeline stage holds them. Without it (every other model) the ids must lie in the vocabulary
  // and the embedding runs exactly as before.
  void add_mask_embeddings(int64_t masks, uint64_t seed);
  int64_t mask_tokens() const { return masks_ ? masks_->masks() : 0; }
  int32_t mask_token_id(int64_t i) const;  // throws unless 0 <= i < mask_tokens()

  void collect_params(std::vector<Param*>& out) override;  // the model's, then the attached modules'
  // The blocks' linear layers and the lm_head (not an attached module's).
  void collect_linears(std::vector<LinearWeight*>& out) override;
  // The model's own params: what a Hugging Face export of the model holds (no attached module's).
  void collect_own_params(std::vector<Param*>& out);
  Param& param(const std::string& name);  // throws naming the missing param
  void zero_grad();

  const ModelConfig& config() const { return config_; }
  // Layer-skip routers (the constructor's RouterSpec): their params on this stage, and the spec.
  std::vector<Param*> router_params();
  const RouterSpec* routers() const { return routers_ ? &*routers_ : nullptr; }
  // Token rows each sub-block kind computed over this stage's blocks (training and cached
  // forwards) since the last reset_routed_rows(): without skipping run == total.
  RoutedRows routed_rows() const;
  void reset_routed_rows();
  // ---- Dr.LLM (RouterKind::DrLLM; models/drllm_router.h, models/transformer_drllm.cpp) ----
  // This stage's Dr.LLM routers (null without them). Routed layers act per sequence: skip,
  // execute or repeat. Training forwards follow StepContext::layer_actions when set (else the
  // routers' argmax) and record each routed layer's router input in StepContext::drllm_inputs;
  // a layer where some row skips or repeats saves nothing for a backward (the backbone is frozen:
  // backward through it throws). Each routed layer adds its block passes (0, 1, 2 per sequence) to
  // StepContext::router_stats (capacity = passes / (routed layers x sequences): 1 = the backbone's
  // compute, above 1 with repeats). forward_cached decides at each row's prefill and keeps the
  // decision in the KVCache (KVCache::block_action; repeats write KVCache::repeat_layer).
  DrLLMRouters* drllm_routers() { return drllm_.get(); }
  // ---- end Dr.LLM ----
  // The MindSkip router of global layer `layer` on this stage, or null (tests force its decisions).
  MindSkipRouter* mindskip_router(int64_t layer);
  Communicator* tensor_parallel() const { return tp_; }
  Communicator* sequence_parallel() const { return layout_.sp; }
  const ModelLayout& layout() const { return layout_; }
  int64_t vocab_start() const { return vocab_start_; }  // first id of this rank's logits
  // This rank's bytes: its pipeline stage's params and one micro-batch's activations (under
  // sp for the full length: the rank holds the longest slice).
  MemoryTable memory_table(int64_t batch, int64_t seq_len) const;

 private:
  // Final norm (last stage), this stage's blocks, embeddings (first stage); returns the
  // gradient of the stage's input (undefined on the first stage).
  Tensor trunk_backward(Tensor dx, Cache& c);
  // Checks kv against this model and batch B (forward_cached's checks).
  void check_cache(const KVCache& kv, int64_t B, const char* where) const;
  // Every block on x [B, T, hidden] through kv starting at slot `start` (the rows' own slots when
  // the step is not a common run), recording taps; advances kv by T.
  // Runs blocks first .. stop - 1 only (early exit, or its verification from layer first); stop = -1: to the last.
  Tensor blocks_cached(Tensor x, KVCache& kv, int64_t start, HiddenTaps* taps, int64_t stop = -1, int64_t first = 0);
  // This stage's blocks from the last to the first, reporting each one's grads ready when `report`.
  Tensor blocks_backward(Tensor dx, Cache& c, bool report);
  // The head and loss on the last stage's hidden state, saving into c; the backward from it.
  float head_loss(const Tensor& hidden, const Tensor& targets, Cache& c, int ignore_index);
  Tensor head_loss_backward(Cache& c, float loss_scale, int64_t loss_tokens);
  // Token (and GPT-2 position) embeddings of ids whose first position is `start`.
  Tensor embed_stage_input(const Tensor& ids, int64_t start, Cache& c);
  // x [B, T, C] += wpe[position_ids[b, t]] (explicit positions: the StepContext's or a decode step's).
  void add_position_embeddings(Tensor& x, const Tensor& position_ids) const;
  bool tied_over_stages() const { return config_.tie_word_embeddings && layout_.stages > 1; }
  void report_grads_ready(std::initializer_list<Module*> modules);
  // Under sp: all-gathers the slice lengths, checks them against partition_sequence (every
  // rank alike), sets the attention layers' partition; returns the slice's first position.
  // Without sp: 0 (the slice is the whole sequence).
  int64_t enter_sequence(int64_t local_length);
  GradReadyCallback grad_ready_;
  ModelConfig config_;
  ModelLayout layout_;
  Communicator* tp_;  // layout_.tp
  int64_t vocab_start_;
  int64_t first_layer_ = 0;  // global index of blocks_[0]
  std::shared_ptr<RopeTables> rope_;  // shared read-only with the attention layers; moved by to()
  Device device_;
  DType compute_ = DType::F32;
  std::shared_ptr<SequenceParallelContext> sequence_;  // null without sp; shared with the attention layers
  // Each part exists only on the pipeline stage that runs it (all of them with one stage).
  std::optional<VocabParallelEmbedding> wte_;  // first stage; also the last when tied (the head's weight)
  std::optional<Embedding> wpe_;  // GPT-2 learned positions; first stage
  std::unique_ptr<MaskTokenEmbedding> masks_;  // ParallelSpec's mask tokens (first stage); embeds in wte_'s place
  std::vector<std::unique_ptr<TransformerBlock>> blocks_;  // this stage's layers
  std::unique_ptr<Module> norm_f_;  // last stage
  std::optional<ColumnParallelLinear> head_;  // last stage: lm_head, or the tied head on wte's weight (no params)
  std::vector<Module*> attached_;             // attach()
  std::optional<RouterSpec> routers_;         // layer-skip routers, or none
  // ---- Dr.LLM ----
  std::unique_ptr<DrLLMRouters> drllm_;  // RouterKind::DrLLM's routers, or null
  // Block i of this stage on x under the layer's Dr.LLM action (forced or routed), or plainly.
  Tensor drllm_layer(size_t i, const Tensor& x, Cache& c);
  Tensor drllm_layer_cached(size_t i, const Tensor& x, KVCache& kv, int64_t start);
  // ---- end Dr.LLM ----
};

}  // namespace anvil
