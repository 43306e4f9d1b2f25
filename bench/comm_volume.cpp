// Communication volume per rank and step, for one process-grid layout, next to the
// textbook volume of that layout (issue 4's comm-volume bench).
//
//   mpirun -np N comm_volume CONFIG.yaml DP TP PP SP ZERO [STEPS]   (bench/run_comm_bench.sh runs the list)
//
// Measured: every collective and send the trainer makes goes through a counting wrapper that
// adds the bytes this rank puts on the wire under the standard algorithms (ring all-reduce
// 2(n-1)/n of the buffer, reduce-scatter / all-gather / all-to-all (n-1)/n, all-to-allv the
// off-rank counts exactly, sends their size, broadcast 2(n-1)/n as scatter + all-gather).
// So it counts what the trainer asks for, including everything the textbook leaves out
// (padding, loss / token-count / grad-norm reductions, the optimizer's traffic).
//
// Textbook, from the model's shapes alone (B sequences of T tokens per micro-batch, M
// micro-batches, this rank's stage of L / pp layers, C hidden, t = tp, s = sp, n = dp*sp):
//   gradients   ZeRO 0/1: ring all-reduce 2(n-1)/n G; ZeRO-2: reduce-scatter (n-1)/n G
//   ZeRO 1/2    parameter all-gather (n-1)/n P
//   tp          per micro-batch 4 all-reduces of the [B, T/s, C] activations per layer, one for the
//               vocab-parallel embedding (first stage) and one for the head's input gradient (last)
//   sp          per layer and micro-batch, q, k, v and out all-to-all forward and back: (s-1)/s each
//   pp          per micro-batch the [B, T/s, C] activation forward (not last stage) and its gradient
//               back (not first); a tied embedding's gradient between the first and last stage
// G and P are this rank's trainable bytes (its tp shard of its stage). The checkpoint that
// train() writes at its end is measured on its own and left out of the per-step figure.
#include <mpi.h>

#include <cstdio>
#include <memory>
#include <string>

#include "parallel/mpi_communicator.h"
#include "trainer/trainer.h"

using namespace anvil;

namespace {

struct WireCount {
  double bytes = 0;
};

class CountingCommunicator final : public Communicator {
 public:
  CountingCommunicator(std::shared_ptr<Communicator> inner, std::shared_ptr<WireCount> count)
      : inner_(std::move(inner)), count_(std::move(count)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  void all_reduce(Tensor& t, ReduceOp op) override {
    add(2.0 * frac() * t.nbytes());
    inner_->all_reduce(t, op);
  }
  std::unique_ptr<CommHandle> all_reduce_async(Tensor& t, ReduceOp op) override {
    add(2.0 * frac() * t.nbytes());
    return inner_->all_reduce_async(t, op);
  }
  void reduce_scatter(const Tensor& in, Tensor& out, ReduceOp op) override {
    add(frac() * in.nbytes());
    inner_->reduce_scatter(in, out, op);
  }
  std::unique_ptr<CommHandle> reduce_scatter_async(const Tensor& in, Tensor& out, ReduceOp op) override {
    add(frac() * in.nbytes());
    return inner_->reduce_scatter_async(in, out, op);
  }
  void all_gather(const Tensor& in, Tensor& out) override {
    add(frac() * out.nbytes());
    inner_->all_gather(in, out);
  }
  void all_to_all(const Tensor& in, Tensor& out) override {
    add(frac() * in.nbytes());
    inner_->all_to_all(in, out);
  }
  void all_to_allv(const Tensor& in, const std::vector<int64_t>& send_counts, Tensor& out,
                   const std::vector<int64_t>& recv_counts) override {
    int64_t off_rank = 0;
    for (size_t r = 0; r < send_counts.size(); ++r)
      if (static_cast<int>(r) != rank()) off_rank += send_counts[r];
    add(static_cast<double>(off_rank) * static_cast<double>(dtype_size(in.dtype())));
    inner_->all_to_allv(in, send_counts, out, recv_counts);
  }
  void broadcast(Tensor& t, int root) override {
    add(2.0 * frac() * t.nbytes());
    inner_->broadcast(t, root);
  }
  void send(const Tensor& t, int dst, int tag) override {
    add(t.nbytes());
    inner_->send(t, dst, tag);
  }
  void recv(Tensor& t, int src, int tag) override { inner_->recv(t, src, tag); }
  std::unique_ptr<CommHandle> isend(const Tensor& t, int dst, int tag) override {
    add(t.nbytes());
    return inner_->isend(t, dst, tag);
  }
  std::unique_ptr<CommHandle> irecv(Tensor& t, int src, int tag) override { return inner_->irecv(t, src, tag); }
  void barrier() override { inner_->barrier(); }
  std::unique_ptr<Communicator> split(int color, int key) const override {
    return std::make_unique<CountingCommunicator>(std::shared_ptr<Communicator>(inner_->split(color, key)), count_);
  }
  Communicator& backend() override { return inner_->backend(); }

 private:
  double frac() const { return size() > 1 ? static_cast<double>(size() - 1) / size() : 0.0; }
  void add(double bytes) { count_->bytes += bytes; }
  std::shared_ptr<Communicator> inner_;
  std::shared_ptr<WireCount> count_;
};

double textbook_bytes(Trainer& t) {
  const RunConfig& c = t.config();  // resolved (vocab_size: auto is the tokenizer's)
  const ParallelSection& p = c.parallel;
  const ModelConfig& m = c.model;
  TransformerLM& model = t.model();
  double grads = 0, params = 0;
  for (Param* q : model.params())
    if (q->trainable && q != model.tied_embedding_copy()) {
      grads += q->grad.nbytes();
      params += q->value.nbytes();
    }
  const double n = static_cast<double>(p.dp * p.sp), tp = static_cast<double>(p.tp), sp = static_cast<double>(p.sp);
  const double M = static_cast<double>(c.training.grad_accum_steps);
  const double layers = static_cast<double>(m.num_hidden_layers / p.pp);
  const double activation = static_cast<double>(c.training.micro_batch_size) * (c.data.seq_len / sp) *
                            static_cast<double>(m.hidden_size) * 4.0;
  const bool first = model.is_first_stage(), last = model.is_last_stage();
  double bytes = 0;
  if (n > 1) {
    bytes += (c.optimizer.zero == 2 ? 1.0 : 2.0) * (n - 1) / n * grads;
    if (c.optimizer.zero >= 1) bytes += (n - 1) / n * params;
  }
  if (tp > 1) bytes += M * (4 * layers + first + last) * 2 * (tp - 1) / tp * activation;
  if (sp > 1) {
    const double head_dim = static_cast<double>(m.resolved_head_dim());
    const double heads = (2.0 * m.num_attention_heads + 2.0 * m.num_key_value_heads) / tp;  // q, out, k, v
    const double per_layer = static_cast<double>(c.training.micro_batch_size) * (c.data.seq_len / sp) * heads *
                             head_dim * 4.0 * (sp - 1) / sp;
    bytes += M * layers * 2 * per_layer;  // forward and backward
  }
  if (p.pp > 1) {
    bytes += M * ((last ? 0 : 1) + (first ? 0 : 1)) * activation;
    if (m.tie_word_embeddings && (first || last)) bytes += static_cast<double>(m.vocab_size / p.tp) * m.hidden_size * 4.0;
  }
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int code = 0;
  try {
    ANVIL_CHECK(argc >= 7, "usage: comm_volume CONFIG.yaml DP TP PP SP ZERO [STEPS]");
    const int64_t steps = argc > 7 ? std::stoll(argv[7]) : 4;
    std::shared_ptr<Communicator> mpi = MpiCommunicator::world();
    auto count = std::make_shared<WireCount>();
    auto world = std::make_shared<CountingCommunicator>(mpi, count);
    const std::string out = "/tmp/anvil_comm_volume";
    RunConfig config = load_run_config(
        argv[1], {"parallel.dp=" + std::string(argv[2]), "parallel.tp=" + std::string(argv[3]),
                  "parallel.pp=" + std::string(argv[4]), "parallel.sp=" + std::string(argv[5]),
                  "optimizer.zero=" + std::string(argv[6]), "training.steps=" + std::to_string(steps + 1),
                  "training.eval_every=0", "training.sample_every=0", "schedule.warmup_steps=0", "checkpoint.every=0", "checkpoint.resume=none",
                  "run.out_dir=" + out, "checkpoint.dir=" + out + "/checkpoints", "run.peer_timeout=0",
                  "logging.jsonl=false", "logging.tensorboard=false", "run.threads=1"});
    config.training.micro_batch_size /= config.parallel.dp;  // the same global batch for every layout
    Trainer trainer(config, TrainerMode::Quiet, world);
    trainer.train(1);  // warm-up step (buckets, first gathers)
    const double before = count->bytes;
    trainer.train(1 + steps);
    const double trained = count->bytes;
    trainer.save();  // train() ends with a checkpoint: take its gathers out of the per-step figure
    const double checkpoint = count->bytes - trained;
    const double measured = (trained - before - checkpoint) / static_cast<double>(steps);
    const double textbook = textbook_bytes(trainer);
    // Every rank's figures, printed in rank order by rank 0.
    Tensor mine = Tensor::from_vector(std::vector<float>{float(measured), float(textbook)}, {2});
    Tensor all = Tensor::empty({2 * mpi->size()});
    mpi->all_gather(mine, all);
    if (mpi->rank() == 0) {
      const ParallelSection& p = config.parallel;
      std::printf("layout dp%ld tp%ld pp%ld sp%ld zero%ld (B=%ld per dp rank, T=%ld, M=%ld): per rank and step\n",
                  long(p.dp), long(p.tp), long(p.pp), long(p.sp), long(config.optimizer.zero),
                  long(config.training.micro_batch_size), long(config.data.seq_len),
                  long(config.training.grad_accum_steps));
      for (int r = 0; r < mpi->size(); ++r) {
        const double got = all.data<float>()[2 * r], want = all.data<float>()[2 * r + 1];
        std::printf("  rank %d: sent %10.0f B, textbook %10.0f B, ratio %.3f\n", r, got, want,
                    want > 0 ? got / want : 0.0);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    code = 1;
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return code;
}
