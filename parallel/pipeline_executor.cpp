#include "parallel/pipeline_executor.h"

#include <cmath>
#include <map>
#include <memory>

#include "parallel/tensor_parallel.h"

namespace anvil {

namespace {
int activation_tag(int micro_batch) { return 2 * micro_batch; }
int gradient_tag(int micro_batch) { return 2 * micro_batch + 1; }

int64_t count_targets(const Tensor& targets, int ignore_index) {
  const Tensor t = targets.to(Device::cpu()).contiguous();  // counted on the host
  const int32_t* p = t.data<int32_t>();
  int64_t n = 0;
  for (int64_t i = 0; i < t.numel(); ++i) n += p[i] != ignore_index;
  return n;
}

// The tables of every stage complete under their dependencies (the no-deadlock argument).
void check_schedule_completes(PipeSchedule schedule, int stages, int micro_batches) {
  std::vector<std::vector<PipeAction>> tables;
  for (int s = 0; s < stages; ++s) tables.push_back(pipeline_actions(schedule, stages, s, micro_batches));
  simulate_pipeline(tables, 1.0, 2.0);  // throws if they deadlock
}
}  // namespace

PipelineExecutor::PipelineExecutor(TransformerLM& model, Communicator* pp, PipeSchedule schedule)
    : model_(model), pp_(pp), schedule_(schedule), stage_(model.layout().stage), stages_(model.layout().stages) {
  if (stages_ == 1 && pp == nullptr) return;
  ANVIL_CHECK(pp != nullptr && pp->size() == stages_ && pp->rank() == stage_, "PipelineExecutor: the model is stage ",
              stage_, " of ", stages_, " but the pipeline communicator is ",
              pp ? "rank " + std::to_string(pp->rank()) + " of " + std::to_string(pp->size()) : std::string("null"),
              " — build the model with ModelLayout{.., stage = grid.rank(Axis::PP), stages = grid.size(Axis::PP)} "
              "and pass grid.comm(Axis::PP)");
}

PipelineStepResult PipelineExecutor::step(const std::vector<PipelineMicroBatch>& micro_batches, int ignore_index) {
  const int M = static_cast<int>(micro_batches.size());
  ANVIL_CHECK(M >= 1, "PipelineExecutor::step needs at least one micro-batch");
  ANVIL_CHECK(gradient_tag(M - 1) < kMaxPortableTag, "PipelineExecutor::step: ", M,
              " micro-batches exceed the message tags MPI guarantees — use at most ", kMaxPortableTag / 2);
  for (int m = 0; m < M; ++m) {
    const PipelineMicroBatch& mb = micro_batches[m];
    ANVIL_CHECK(mb.ids.defined() && mb.targets.defined() && mb.ids.dim() == 2 && mb.targets.shape() == mb.ids.shape(),
                "PipelineExecutor::step: micro-batch ", m, " needs ids and targets of one shape [batch, seq_len] on "
                "every stage (later stages size their messages by it), got ",
                mb.ids.defined() ? mb.ids.describe() : "no ids", " and ",
                mb.targets.defined() ? mb.targets.describe() : "no targets");
  }
  const std::vector<PipeAction> actions = pipeline_actions(schedule_, stages_, stage_, M);
  check_schedule_completes(schedule_, stages_, M);
  const bool first = model_.is_first_stage(), last = model_.is_last_stage();
  const int64_t C = model_.config().hidden_size;
  // Hidden states and their gradients travel in the model's compute dtype, on its device.
  auto hidden_buffer = [&](int m) {
    return Tensor::empty({micro_batches[m].ids.size(0), micro_batches[m].ids.size(1), C}, model_.compute_dtype(),
                         model_.device());
  };

  PipelineStepResult result;
  std::vector<float> losses(M, 0.0f);
  std::map<int, Cache> in_flight;  // micro-batch -> what its forward saved, until its backward
  std::vector<std::unique_ptr<CommHandle>> sends;
  // Sends finish when the neighbour receives; drop the finished ones (and their buffers) as we go.
  auto reap_sends = [&] {
    std::vector<std::unique_ptr<CommHandle>> pending;
    for (auto& h : sends)
      if (!h->test()) pending.push_back(std::move(h));
    sends = std::move(pending);
  };
  for (const PipeAction& a : actions) {
    const int m = a.micro_batch;
    const PipelineMicroBatch& mb = micro_batches[m];
    if (a.op == PipeOp::Forward) {
      Cache& c = in_flight[m];
      Tensor input = mb.ids;
      if (!first) {
        input = hidden_buffer(m);
        pp_->recv(input, stage_ - 1, activation_tag(m));
      }
      if (last) {
        losses[m] = model_.forward_stage_loss(input, mb.targets, c, ignore_index);
      } else {
        sends.push_back(pp_->isend(model_.forward_stage(input, c), stage_ + 1, activation_tag(m)));
      }
      result.peak_in_flight = std::max(result.peak_in_flight, static_cast<int>(in_flight.size()));
      size_t bytes = 0;
      for (const auto& [k, cache] : in_flight) bytes += cache.bytes();
      result.peak_activation_bytes = std::max(result.peak_activation_bytes, bytes);
    } else {
      if (before_backward_) before_backward_(m, &a == &actions.back());  // every table ends with a backward
      auto it = in_flight.find(m);
      ANVIL_CHECK(it != in_flight.end(), "pipeline table runs backward ", m, " before its forward");
      Tensor dx;
      if (last) {
        dx = model_.backward_stage_loss(it->second, mb.loss_scale, mb.loss_tokens);
      } else {
        Tensor dy = hidden_buffer(m);
        pp_->recv(dy, stage_ + 1, gradient_tag(m));
        dx = model_.backward_stage(dy, it->second);
      }
      in_flight.erase(it);
      if (!first) sends.push_back(pp_->isend(dx, stage_ - 1, gradient_tag(m)));
    }
    reap_sends();
  }
  for (auto& h : sends) h->wait();
  ANVIL_CHECK(in_flight.empty() && result.peak_in_flight <= peak_in_flight(actions),
              "PipelineExecutor: stage ", stage_, " held ", result.peak_in_flight, " micro-batches at once, its table "
              "allows ", peak_in_flight(actions), " (", in_flight.size(), " left after the step)");

  if (pp_) model_.all_reduce_tied_embedding_grad(*pp_);
  Tensor shared = Tensor::from_vector(losses, {M});
  if (pp_ && stages_ > 1) pp_->broadcast(shared, stages_ - 1);
  result.losses.assign(shared.data<float>(), shared.data<float>() + M);
  for (int m = 0; m < M; ++m) {  // every rank from the same floats: the same double everywhere
    const PipelineMicroBatch& mb = micro_batches[m];
    const double count = static_cast<double>(count_targets(mb.targets, ignore_index));
    const double divisor = mb.loss_tokens >= 0 ? static_cast<double>(mb.loss_tokens) : count;
    if (divisor > 0) result.loss += mb.loss_scale * static_cast<double>(result.losses[m]) * count / divisor;
  }
  return result;
}

std::vector<float> PipelineExecutor::evaluate(const std::vector<PipelineMicroBatch>& micro_batches,
                                              int ignore_index) {
  const int M = static_cast<int>(micro_batches.size());
  const bool first = model_.is_first_stage(), last = model_.is_last_stage();
  const int64_t C = model_.config().hidden_size;
  std::vector<float> losses(M, 0.0f);
  std::vector<std::unique_ptr<CommHandle>> sends;
  for (int m = 0; m < M; ++m) {  // stage by stage, one micro-batch after another (same tags as step)
    const PipelineMicroBatch& mb = micro_batches[m];
    Cache c;  // dropped at once: nothing runs backward
    Tensor input = mb.ids;
    if (!first) {
      input = Tensor::empty({mb.ids.size(0), mb.ids.size(1), C}, model_.compute_dtype(), model_.device());
      pp_->recv(input, stage_ - 1, activation_tag(m));
    }
    if (last) losses[m] = model_.forward_stage_loss(input, mb.targets, c, ignore_index);
    else sends.push_back(pp_->isend(model_.forward_stage(input, c), stage_ + 1, activation_tag(m)));
  }
  for (auto& h : sends) h->wait();
  Tensor shared = Tensor::from_vector(losses, {M});
  if (pp_ && stages_ > 1) pp_->broadcast(shared, stages_ - 1);
  return std::vector<float>(shared.data<float>(), shared.data<float>() + M);
}


}  // namespace anvil
