#include "parallel/pipeline_executor.h"

#include <cstring>
#include <memory>
#include <map>

namespace anvil {

namespace {
int activation_tag(int micro_batch) { return 2 * micro_batch; }
int gradient_tag(int micro_batch) { return 2 * micro_batch + 1; }
// The side channel's messages (PipelineStage::stat_count) follow the M micro-batches' tags.
int stats_forward_tag(int micro_batch, int M) { return 2 * M + 2 * micro_batch; }
int stats_backward_tag(int micro_batch, int M) { return 2 * M + 2 * micro_batch + 1; }

// The tables of every stage complete under their dependencies (the no-deadlock argument).
void check_schedule_completes(PipeSchedule schedule, int stages, int micro_batches) {
  std::vector<std::vector<PipeAction>> tables;
  for (int s = 0; s < stages; ++s) tables.push_back(pipeline_actions(schedule, stages, s, micro_batches));
  simulate_pipeline(tables, 1.0, 2.0);  // throws if they deadlock
}

void check_micro_batch_count(int M, bool side_channel) {
  ANVIL_CHECK(M >= 1, "PipelineExecutor needs at least one micro-batch");
  const int last_tag = side_channel ? stats_backward_tag(M - 1, M) : gradient_tag(M - 1);
  const int per_micro_batch = side_channel ? 4 : 2;
  ANVIL_CHECK(last_tag < kMaxPortableTag, "PipelineExecutor: ", M, " micro-batches exceed the message tags MPI "
              "guarantees — use at most ", kMaxPortableTag / per_micro_batch);
}
}  // namespace

std::vector<float> PipelineExecutor::forward_stats(int m, int M, std::vector<std::unique_ptr<CommHandle>>& sends,
                                                  PipelineLoss* loss) {
  const int k = stage_impl_.stat_count();
  std::vector<float> totals(k, 0.0f);
  if (k == 0) return totals;
  if (stage_ > 0) {  // the sums of the stages before this one
    Tensor in = Tensor::empty({k}, DType::F32, stage_impl_.device());
    pp_->recv(in, stage_ - 1, stats_forward_tag(m, M));
    totals = in.to_vector();
  }
  const std::vector<float> own = stage_impl_.forward_stats(m);
  ANVIL_CHECK(static_cast<int>(own.size()) == k, "PipelineStage::forward_stats gave ", own.size(),
              " statistics for micro-batch ", m, ", stat_count() says ", k);
  for (int i = 0; i < k; ++i) totals[i] += own[i];
  if (stage_ < stages_ - 1) {
    sends.push_back(pp_->isend(Tensor::from_vector(totals, {k}).to(stage_impl_.device()), stage_ + 1,
                               stats_forward_tag(m, M)));
  } else {
    totals = loss->reduce_stats(m, std::move(totals));
    ANVIL_CHECK(static_cast<int>(totals.size()) == k, "PipelineLoss::reduce_stats returned ", totals.size(),
                " statistics, stat_count() says ", k);
  }
  return totals;
}

PipelineExecutor::PipelineExecutor(PipelineStage& stage, Communicator* pp, PipeSchedule schedule)
    : stage_impl_(stage), pp_(pp), schedule_(schedule), stage_(pp ? pp->rank() : 0), stages_(pp ? pp->size() : 1) {}

void PipelineExecutor::share_values(std::vector<PipelineLoss::Value>& values, PipelineStepResult& result) const {
  // There is no f64 dtype: the doubles travel as their 64-bit patterns, so every rank gets the
  // last stage's values bit for bit.
  const size_t M = values.size();
  std::vector<int64_t> bits(3 * M);
  for (size_t m = 0; m < M; ++m) {
    const double v[3] = {static_cast<double>(values[m].loss), values[m].weight, values[m].objective};
    std::memcpy(&bits[3 * m], v, sizeof v);
  }
  Tensor shared = Tensor::empty({static_cast<int64_t>(3 * M)}, DType::I64);
  std::memcpy(shared.data<int64_t>(), bits.data(), bits.size() * sizeof(int64_t));
  if (pp_ && stages_ > 1) pp_->broadcast(shared, stages_ - 1);
  std::memcpy(bits.data(), shared.data<int64_t>(), bits.size() * sizeof(int64_t));
  result.losses.resize(M);
  result.weights.resize(M);
  result.loss = 0;
  for (size_t m = 0; m < M; ++m) {  // summed in micro-batch order on every rank: the same double everywhere
    double v[3];
    std::memcpy(v, &bits[3 * m], sizeof v);
    result.losses[m] = static_cast<float>(v[0]);
    result.weights[m] = v[1];
    result.loss += v[2];
  }
}

PipelineStepResult PipelineExecutor::step(int M, PipelineLoss& loss) {
  const int k = stage_impl_.stat_count();
  check_micro_batch_count(M, k > 0);
  const std::vector<PipeAction> actions = pipeline_actions(schedule_, stages_, stage_, M);
  check_schedule_completes(schedule_, stages_, M);
  const bool first = stage_ == 0, last = stage_ == stages_ - 1;
  // Activations and their gradients travel in the stage's dtype, on its device.
  auto buffer = [&](int m) {
    return Tensor::empty(stage_impl_.input_shape(m), stage_impl_.activation_dtype(), stage_impl_.device());
  };

  PipelineStepResult result;
  std::vector<PipelineLoss::Value> values(M);
  std::map<int, std::vector<float>> stat_totals;  // side channel: m's reduced totals until its backward
  std::map<int, Shape> in_flight;  // micro-batches whose forward ran and backward did not -> their output's shape
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
    if (a.op == PipeOp::Forward) {
      Tensor input;
      if (!first) {
        input = buffer(m);
        pp_->recv(input, stage_ - 1, activation_tag(m));
      }
      Tensor output = stage_impl_.forward(m, input, true);
      in_flight[m] = output.shape();
      if (k > 0) {
        std::vector<float> totals = forward_stats(m, M, sends, &loss);
        if (last) stat_totals[m] = std::move(totals);  // the reduced totals backward sends back
      }
      if (last) values[m] = loss.forward(m, output, true);
      else sends.push_back(pp_->isend(output, stage_ + 1, activation_tag(m)));
      result.peak_in_flight = std::max(result.peak_in_flight, static_cast<int>(in_flight.size()));
      result.peak_activation_bytes =
          std::max(result.peak_activation_bytes, stage_impl_.saved_bytes() + (last ? loss.saved_bytes() : 0));
    } else {
      if (before_backward_) before_backward_(m, &a == &actions.back());  // every table ends with a backward
      const auto it = in_flight.find(m);
      ANVIL_CHECK(it != in_flight.end(), "pipeline table runs backward ", m, " before its forward");
      const bool gradients_travel = stage_impl_.passes_gradient();
      if (k > 0) {  // m's totals: kept on the last stage, from the next stage elsewhere; passed on down
        std::vector<float> totals;
        if (last) {
          totals = std::move(stat_totals.at(m));
          stat_totals.erase(m);
        } else {
          Tensor in = Tensor::empty({k}, DType::F32, stage_impl_.device());
          pp_->recv(in, stage_ + 1, stats_backward_tag(m, M));
          totals = in.to_vector();
        }
        if (!first)
          sends.push_back(pp_->isend(Tensor::from_vector(totals, {k}).to(stage_impl_.device()), stage_ - 1,
                                     stats_backward_tag(m, M)));
        stage_impl_.set_stat_totals(m, totals);
      }
      Tensor dy;
      if (last) {
        dy = loss.backward(m);
      } else if (gradients_travel) {  // the gradient of what forward m sent
        dy = Tensor::empty(it->second, stage_impl_.activation_dtype(), stage_impl_.device());
        pp_->recv(dy, stage_ + 1, gradient_tag(m));
      }
      Tensor dx = stage_impl_.backward(m, dy);
      dy = Tensor();
      in_flight.erase(it);
      if (!first && gradients_travel) sends.push_back(pp_->isend(dx, stage_ - 1, gradient_tag(m)));
    }
    reap_sends();
  }
  for (auto& h : sends) h->wait();
  ANVIL_CHECK(in_flight.empty() && result.peak_in_flight <= peak_in_flight(actions),
              "PipelineExecutor: stage ", stage_, " held ", result.peak_in_flight, " micro-batches at once, its table "
              "allows ", peak_in_flight(actions), " (", in_flight.size(), " left after the step)");

  stage_impl_.finish_backward(stages_ > 1 ? pp_ : nullptr);
  share_values(values, result);
  return result;
}

PipelineStepResult PipelineExecutor::evaluate(int M, PipelineLoss& loss) {
  const int k = stage_impl_.stat_count();
  check_micro_batch_count(M, k > 0);
  const bool first = stage_ == 0, last = stage_ == stages_ - 1;
  std::vector<PipelineLoss::Value> values(M);
  std::vector<std::unique_ptr<CommHandle>> sends;
  for (int m = 0; m < M; ++m) {  // stage by stage, one micro-batch after another (same tags as step)
    Tensor input;
    if (!first) {
      input = Tensor::empty(stage_impl_.input_shape(m), stage_impl_.activation_dtype(), stage_impl_.device());
      pp_->recv(input, stage_ - 1, activation_tag(m));
    }
    Tensor output = stage_impl_.forward(m, input, false);
    if (k > 0) forward_stats(m, M, sends, &loss);  // the loss sees the totals (reduce_stats); no backward
    if (last) values[m] = loss.forward(m, output, false);
    else sends.push_back(pp_->isend(output, stage_ + 1, activation_tag(m)));
  }
  for (auto& h : sends) h->wait();
  PipelineStepResult result;
  share_values(values, result);
  return result;
}

}  // namespace anvil
