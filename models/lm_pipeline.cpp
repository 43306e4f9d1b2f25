#include "models/lm_pipeline.h"

namespace anvil {

int64_t count_loss_tokens(const Tensor& targets, int ignore_index) {
  const Tensor t = targets.to(Device::cpu()).contiguous();  // counted on the host
  const int32_t* p = t.data<int32_t>();
  int64_t n = 0;
  for (int64_t i = 0; i < t.numel(); ++i) n += p[i] != ignore_index;
  return n;
}

TransformerStage::TransformerStage(TransformerLM& model) : model_(model) {}

void TransformerStage::set_inputs(std::vector<Tensor> ids, std::vector<std::shared_ptr<StepContext>> contexts) {
  ANVIL_CHECK(caches_.empty(), "TransformerStage: new inputs while ", caches_.size(),
              " micro-batches still wait for their backward");
  for (size_t m = 0; m < ids.size(); ++m)
    ANVIL_CHECK(ids[m].defined() && ids[m].dim() == 2, "pipeline micro-batch ", m, " needs token ids [batch, "
                "seq_len] on every stage (later stages size their messages by them), got ",
                ids[m].defined() ? ids[m].describe() : "none");
  ANVIL_CHECK(contexts.empty() || contexts.size() == ids.size(), "TransformerStage: ", contexts.size(),
              " step contexts for ", ids.size(), " micro-batches — give one per micro-batch, or none");
  ids_ = std::move(ids);
  contexts_ = std::move(contexts);
}

Shape TransformerStage::input_shape(int m) const {
  ANVIL_CHECK(m >= 0 && m < micro_batches(), "TransformerStage: micro-batch ", m, " has no inputs (", micro_batches(),
              " set)");
  return {ids_[m].size(0), ids_[m].size(1), model_.config().hidden_size};
}

Cache& TransformerStage::cache(int m) { return caches_[m]; }

Tensor TransformerStage::forward(int m, const Tensor& input, bool for_backward) {
  const Tensor& x = model_.is_first_stage() ? ids_.at(m) : input;
  Cache scratch;  // evaluation: dropped at once, nothing runs backward
  Cache& c = for_backward ? caches_[m] : scratch;
  if (!contexts_.empty() && contexts_.at(m)) c.set_context(contexts_[m]);
  return model_.forward_stage(x, c);
}

Tensor TransformerStage::backward(int m, const Tensor& dy) {
  auto it = caches_.find(m);
  ANVIL_CHECK(it != caches_.end(), "TransformerStage: backward of micro-batch ", m, " before its forward");
  Tensor dx = model_.backward_stage(dy, it->second);
  caches_.erase(it);
  return dx;
}

size_t TransformerStage::saved_bytes() const {
  size_t bytes = 0;
  for (const auto& [m, c] : caches_) bytes += c.bytes();
  return bytes;
}

void TransformerStage::finish_backward(Communicator* pp) {
  if (pp) model_.all_reduce_tied_embedding_grad(*pp);
}

CausalLMLoss::CausalLMLoss(TransformerStage& stage, int ignore_index) : stage_(stage), ignore_index_(ignore_index) {}

void CausalLMLoss::set_micro_batches(const std::vector<LMMicroBatch>& micro_batches, std::vector<int64_t> counts) {
  ANVIL_CHECK(counts.empty() || counts.size() == micro_batches.size(), "CausalLMLoss: ", counts.size(),
              " token counts for ", micro_batches.size(), " micro-batches");
  micro_ = micro_batches;
  counts_ = std::move(counts);
  if (counts_.empty())
    for (const LMMicroBatch& mb : micro_) counts_.push_back(count_loss_tokens(mb.targets, ignore_index_));
}

PipelineLoss::Value CausalLMLoss::forward(int m, const Tensor& hidden, bool for_backward) {
  TransformerLM& model = stage_.model();
  const LMMicroBatch& mb = micro_.at(m);
  Cache scratch;
  Cache& c = for_backward ? model.head_cache(stage_.cache(m)) : scratch;
  const Tensor logits = model.forward_head(hidden, c.child(0));
  return token_mean_loss(model.cross_entropy().forward(logits, mb.targets, c, ignore_index_), mb, counts_[m]);
}

PipelineLoss::Value token_mean_loss(float loss, const LMMicroBatch& mb, int64_t count) {
  PipelineLoss::Value v;
  v.loss = loss;
  v.weight = static_cast<double>(count);
  const double divisor = mb.loss_tokens >= 0 ? static_cast<double>(mb.loss_tokens) : v.weight;
  v.objective = divisor > 0 ? mb.loss_scale * static_cast<double>(v.loss) * v.weight / divisor : 0.0;
  return v;
}

Tensor CausalLMLoss::backward(int m) {
  TransformerLM& model = stage_.model();
  const LMMicroBatch& mb = micro_.at(m);
  Cache& c = model.head_cache(stage_.cache(m));
  Tensor dx;
  {
    const Tensor dlogits = model.cross_entropy().backward(c, mb.loss_scale, mb.loss_tokens);  // over the logits
    dx = model.backward_head(dlogits, c.child(0));
    c.clear();  // the logits and the loss's rows die here, with dlogits
  }
  return dx;
}

namespace {
Communicator* checked_pp(TransformerLM& model, Communicator* pp) {
  const int stage = model.layout().stage, stages = model.layout().stages;
  if (stages == 1 && pp == nullptr) return pp;
  ANVIL_CHECK(pp != nullptr && pp->size() == stages && pp->rank() == stage, "pipeline: the model is stage ", stage,
              " of ", stages, " but the pipeline communicator is ",
              pp ? "rank " + std::to_string(pp->rank()) + " of " + std::to_string(pp->size()) : std::string("null"),
              " — build the model with ModelLayout{.., stage = grid.rank(Axis::PP), stages = grid.size(Axis::PP)} "
              "and pass grid.comm(Axis::PP)");
  return pp;
}
}  // namespace

LMPipeline::LMPipeline(TransformerLM& model, Communicator* pp, PipeSchedule schedule, int ignore_index)
    : stage_(model), loss_(stage_, ignore_index), executor_(stage_, checked_pp(model, pp), schedule) {}

void LMPipeline::set(const std::vector<LMMicroBatch>& micro_batches) {
  std::vector<Tensor> ids;
  for (size_t m = 0; m < micro_batches.size(); ++m) {
    const LMMicroBatch& mb = micro_batches[m];
    ANVIL_CHECK(mb.ids.defined() && mb.targets.defined() && mb.ids.dim() == 2 && mb.targets.shape() == mb.ids.shape(),
                "pipeline micro-batch ", m, " needs ids and targets of one shape [batch, seq_len] on every stage "
                "(later stages size their messages by it), got ", mb.ids.defined() ? mb.ids.describe() : "no ids",
                " and ", mb.targets.defined() ? mb.targets.describe() : "no targets");
    ids.push_back(mb.ids);
  }
  stage_.set_inputs(std::move(ids));
  loss_.set_micro_batches(micro_batches);
}

PipelineStepResult LMPipeline::step(const std::vector<LMMicroBatch>& micro_batches) {
  set(micro_batches);
  return executor_.step(static_cast<int>(micro_batches.size()), loss_);
}

std::vector<float> LMPipeline::evaluate(const std::vector<LMMicroBatch>& micro_batches) {
  set(micro_batches);
  return executor_.evaluate(static_cast<int>(micro_batches.size()), loss_).losses;
}

}  // namespace anvil
