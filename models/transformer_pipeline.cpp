// TransformerLM's pipeline-stage entry points (layout.stages > 1; with one stage they run the
// whole model): stage forward/backward, the last stage's loss, and the tied-embedding sum
// between the first and last stage. The executor that drives them is parallel/pipeline_executor.h.
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "models/transformer.h"

namespace anvil {

Tensor TransformerLM::embed_stage_input(const Tensor& ids, int64_t start, Cache& c) {
  check_dtype(ids, DType::I32, "token ids");
  ANVIL_CHECK(ids.dim() == 2, "token ids must be [batch, seq_len], got ", ids.describe());
  const int64_t B = ids.size(0), T = ids.size(1);
  Tensor x = masks_ ? masks_->forward(ids, c.child(0)) : wte_->forward(ids, c.child(0));
  const Tensor& position_ids = c.context().position_ids;
  if (wpe_ && position_ids.defined()) {
    ANVIL_CHECK(position_ids.shape() == ids.shape(), "position ids ", position_ids.describe(),
                " must be [batch, seq_len] like the token ids ", ids.describe(), " (under sp: this rank's slice)");
    add_position_embeddings(x, position_ids);
  } else if (wpe_) {
    c.child(0)["position_start"] = Tensor::full({1}, static_cast<double>(start), DType::I64);  // for wpe's gradient
    const Tensor positions = wpe_->weight.value.slice(0, start, start + T);
    for (int64_t b = 0; b < B; ++b) {
      Tensor row = x.select(0, b);
      kernels::add_inplace(row, positions);
    }
  }
  return x;
}

void TransformerLM::add_position_embeddings(Tensor& x, const Tensor& position_ids) const {
  const Tensor& table = wpe_->weight.value;
  // [B * T, C]: wpe's row at each token's position (embedding_forward range-checks them).
  Tensor rows = Tensor::empty({position_ids.numel(), table.size(1)}, table.dtype(), table.device());
  kernels::embedding_forward(position_ids, table, rows);
  kernels::add_inplace(x, rows.view(x.shape()));
}

Tensor TransformerLM::forward_stage(const Tensor& input, Cache& c, HiddenTaps* taps) {
  ANVIL_CHECK(input.dim() >= 2, "forward_stage: the input must be [batch, seq_len, ...], got ", input.describe());
  // Under sp every stage learns the split (its attention layers need it); the first also the positions.
  const int64_t T = input.size(1);
  const int64_t start = enter_sequence(T), total = sequence_ ? sequence_->part.total : T;
  ANVIL_CHECK(total <= config_.max_position_embeddings, "sequence length ", total,
              " exceeds max_position_embeddings = ", config_.max_position_embeddings,
              " — shorten the sequences or raise the model's limit");
  Tensor x;
  if (is_first_stage()) {
    x = embed_stage_input(input, start, c);
  } else {
    ANVIL_CHECK(input.dtype() == compute_ && input.dim() == 3 && input.size(2) == config_.hidden_size,
                "pipeline stage ", layout_.stage, " takes the previous stage's hidden state ", dtype_name(compute_),
                " [batch, seq_len, ", config_.hidden_size, "], got ", input.describe(),
                " — only stage 0 takes token ids");
    x = input;
  }
  if (taps) {
    for (int64_t layer : taps->layers)
      ANVIL_CHECK(layer >= 0 && layer < config_.num_hidden_layers, "hidden taps: layer ", layer,
                  " does not exist — the model has layers 0 .. ", config_.num_hidden_layers - 1);
    taps->states.assign(taps->layers.size(), Tensor());
  }
  const size_t L = blocks_.size();
  for (size_t i = 0; i < L; ++i) {
    x = drllm_layer(i, x, c);  // the block, or its Dr.LLM action (models/transformer_drllm.cpp)
    if (taps)
      for (size_t k = 0; k < taps->layers.size(); ++k)
        if (taps->layers[k] == first_layer_ + static_cast<int64_t>(i)) taps->states[k] = x;
  }
  if (!is_last_stage()) return x;
  return norm_f_->forward(x, c.child(L + 1));
}

Tensor TransformerLM::backward_stage(const Tensor& dy, Cache& c) {
  check_dtype(dy, compute_, "pipeline stage output gradient");
  ANVIL_CHECK(dy.dim() == 3 && dy.size(2) == config_.hidden_size, "backward_stage: the output gradient must be [batch, "
              "seq_len, ", config_.hidden_size, "], got ", dy.describe());
  return trunk_backward(dy, c);
}

float TransformerLM::forward_stage_loss(const Tensor& input, const Tensor& targets, Cache& c, int ignore_index) {
  ANVIL_CHECK(is_last_stage(), "forward_stage_loss: stage ", layout_.stage, " of ", layout_.stages,
              " has no head — only the last stage computes the loss; call forward_stage");
  check_dtype(targets, DType::I32, "targets");
  ANVIL_CHECK(targets.dim() == 2 && input.dim() >= 2 && targets.size(0) == input.size(0) &&
                  targets.size(1) == input.size(1),
              "targets ", targets.describe(), " must be [batch, seq_len] of the stage input ", input.describe());
  return head_loss(forward_stage(input, c), targets, c, ignore_index);
}

Tensor TransformerLM::backward_stage_loss(Cache& c, float loss_scale, int64_t loss_tokens) {
  ANVIL_CHECK(is_last_stage(), "backward_stage_loss: stage ", layout_.stage, " of ", layout_.stages,
              " has no loss — it starts backward from the next stage's gradient with backward_stage");
  return head_loss_backward(c, loss_scale, loss_tokens);
}

Param* TransformerLM::tied_embedding_copy() {
  return tied_over_stages() && is_last_stage() ? &wte_->weight : nullptr;
}

void TransformerLM::all_reduce_tied_embedding_grad(Communicator& pp) {
  if (!tied_over_stages() || !(is_first_stage() || is_last_stage())) return;
  ANVIL_CHECK(pp.size() == layout_.stages && pp.rank() == layout_.stage, "all_reduce_tied_embedding_grad: the pipeline "
              "communicator has rank ", pp.rank(), " of ", pp.size(), " but the model is stage ", layout_.stage, " of ",
              layout_.stages, " — pass the grid's pp communicator (ProcessGrid::comm(Axis::PP))");
  Param& w = wte_->weight;
  if (w.grad.defined()) {  // frozen on both ends alike (freezing goes by name)
    const int peer = is_first_stage() ? layout_.stages - 1 : 0;
    Tensor theirs = empty_like(w.grad, w.grad.shape());
    // Both ends send before they receive, so the send must not block (see Communicator::isend).
    std::unique_ptr<CommHandle> sent = pp.isend(w.grad, peer, kMaxPortableTag);
    pp.recv(theirs, peer, kMaxPortableTag);
    sent->wait();
    kernels::add_inplace(w.grad, theirs);  // a + b == b + a in fp32: both ends end bitwise equal
  }
  report_grads_ready({&*wte_});
}

}  // namespace anvil
