// Trainer: builds tokenizer, data, the task (trainer/task.h: the run's models, micro-batches,
// losses and metrics; `task.name`) and the optimizer from a RunConfig, resumes from the
// newest checkpoint, and runs the loop (micro-batch accumulation, clipping, schedule,
// logging, validation, samples, checkpoints). The loop knows nothing task-specific.
//
// Device and precision (run.device, run.precision): the model is built and loaded on the
// CPU in f32, then moved to the rank's device (training_device: GPU local_rank % visible
// GPUs) in the compute dtype (bf16 on cuda by default, with f32 masters, gradients and
// optimizer state; models/README.md). Batches are read on the host and copied to the device
// explicitly; checkpoints hold the f32 masters at full logical shape, so cpu/fp32 and
// cuda/bf16 runs resume each other's checkpoints.
//
// Parallelism (given a world communicator, the ranks form the grid of config.parallel):
// every dp rank reads its slice of the same global batch; tp ranks split heads, MLP width
// and vocabulary; each sp rank keeps its Ulysses slice of every sequence; pp stages own
// contiguous layers and every step runs through the PipelineExecutor (with one stage its
// table is plain accumulation). Gradients are partial sums over dp x sp, reduced in buckets
// during the last micro-batch's backward (parallel/data_parallel.h); optimizer.zero shards
// optimizer state (1) and reduced gradients (2) over that group. The gradient norm counts
// every element once (tp shards, tp replicas on tp rank 0, stages summed, the tied copy
// left out). World rank 0 prints and writes config.yaml and metrics; checkpoints are written
// by all ranks together (trainer/checkpoint.h: each writes its hyperslabs), at full logical
// shapes, so any layout resumes any other (tests/multirank/layout_equivalence_test.cpp).
//
// The invariant (tested in tests/multirank/data_parallel_test.cpp): a run with dp = D
// and micro_batch_size = B takes the same steps as one process with micro_batch_size
// = D * B (same grad_accum_steps), up to fp32 reduction order. Each micro-batch's loss
// is the mean over the non-ignored target tokens of the whole global micro-batch
// (D * B sequences): every rank divides its summed token losses by the token count
// all-reduced over dp, and the gradients are then summed (not averaged) over dp. So
// ranks holding more masked (ignore_index) tokens weigh less, exactly as those tokens
// would in one big batch; plain averaging of per-rank means would not match whenever
// the ranks' token counts differ.
#pragma once
#include <cmath>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "models/transformer.h"
#include "optim/optimizer.h"
#include "parallel/data_parallel.h"
#include "parallel/grad_groups.h"
#include "parallel/grid.h"
#include "parallel/pipeline_executor.h"
#include "trainer/checkpoint.h"
#include "parallel/peer_watchdog.h"
#include "trainer/config.h"
#include "trainer/metrics.h"
#include "trainer/numerics_guard.h"
#include "trainer/task.h"

namespace anvil {

// The device this rank trains on: the CPU, or for run.device: cuda the GPU node-local rank %
// (visible GPUs) (cuda_device_for_rank over `host`, the job's MPI world or null; collective
// over it when no launcher names the local rank), with an Error naming
// cuda_unavailable_reason() when none is visible.
Device training_device(const RunSection& run, Communicator* host = nullptr);
// The dtype weights and activations are computed in (run.precision).
DType compute_dtype(const RunSection& run);

// The launch checks every rank computes alike before any collective: the degrees
// must multiply to the world size. Each failure is one Error naming both numbers and the fix.
void check_parallel_launch(const ParallelSection& parallel, int world_size);
// The loaders' settings of a run on one process (the trainer sets the dp rank and size), as
// its task reads them (Task::configure_loader).
LoaderConfig loader_config(const RunConfig& config);
// The parallel section's degrees as the process grid's dims.
GridDims grid_dims(const ParallelSection& parallel);

struct StepRecord {
  int64_t step = 0;  // 1-based: the optimizer step just taken
  double loss = 0;   // mean over the step's micro-batches
  double lr = 0;
  double grad_norm = 0;  // before clipping
  double tokens_per_s = 0;
  double ms = 0;
  double peak_mb = 0;  // the training device's allocator high-water mark (the GPU's on cuda)
  bool skipped = false;       // the numerics guard skipped the update (trainer/numerics_guard.h)
  std::string guard_reason;   // why it skipped
  int64_t skipped_total = 0;  // steps skipped so far in the run
  double comm_ms = 0;         // this rank's time blocked in communication during the step
  std::vector<double> rank_step_ms, rank_comm_ms;  // every world rank's (after the step's sync)
  std::vector<std::pair<std::string, double>> task_metrics;  // the task's own (Task::step_metrics)
};

// Why train() returned.
enum class StopReason { Finished, Preempted, NumericsGuard };

// Train: writes the run directory and prints progress. Quiet: the same without console
// output (tests). Using a trained model without training it (eval, generate, a task's frozen
// models) goes through load_model (trainer/load_model.h), not a Trainer.
enum class TrainerMode { Train, Quiet };

class Trainer {
 public:
  // Validates the run against its files (tokenizer, store), builds everything and
  // restores the checkpoint chosen by checkpoint.resume.
  // `world`: the job's communicator (null = this process alone). With a world, its
  // ranks form the process grid of config.parallel.
  explicit Trainer(RunConfig config, TrainerMode mode = TrainerMode::Train,
                   std::shared_ptr<Communicator> world = nullptr);
  ~Trainer();

  // Trains until training.steps, or until `stop_at_step` (then saves a checkpoint so
  // a later run resumes exactly there).
  void train(int64_t stop_at_step = -1);
  // Mean validation loss over `batches` batches from the start of the split.
  double evaluate(int64_t batches);
  // A completion of `prompt` with the configured sampling settings, seeded by the step.
  std::string sample(const std::string& prompt, int64_t tokens);

  int64_t step() const { return step_; }
  // The validation loss of the latest periodic evaluation (NaN before the first).
  double last_validation_loss() const { return last_val_loss_; }
  // The task's metrics of the last evaluate() (Task::eval_metrics; empty for lm and sft).
  const std::vector<std::pair<std::string, double>>& evaluation_metrics() const { return eval_metrics_; }
  // The task's loss is a cross-entropy (perplexity and the unigram bar apply); see Task.
  bool loss_is_cross_entropy() const;
  const std::vector<StepRecord>& history() const { return history_; }
  TransformerLM& model() { return *model_; }
  const RunConfig& config() const { return config_; }
  // Entropy (nats/token) of the unigram distribution of the training tokens: the
  // loss of the best model that ignores context, the bar a real LM must clear.
  double unigram_entropy() const;
  // A checkpoint at the current step: a collective over the world (every rank calls it and
  // writes its own hyperslabs; see checkpoint_contents); returns its directory on the main
  // rank, "" on the others.
  std::string save();
  Optimizer& optimizer() { return *optimizer_; }
  DataParallel* data_parallel() { return dp_; }  // the dense params' reducer; null unless dp x sp > 1
  bool is_main_rank() const { return main_rank_; }
  // Why the last train() returned, and for a stop, the message (preemption: the signal and
  // the checkpoint; numerics guard: the step and the reason).
  StopReason stop_reason() const { return stop_reason_; }
  const std::string& stop_message() const { return stop_message_; }
  const NumericsGuard& numerics_guard() const { return guard_; }

 private:
  StepRecord train_step();
  // The one place the grid's communicators are created: split from the MPI world on the CPU,
  // from a NCCL communicator over the same ranks on GPUs (parallel/nccl_communicator.h).
  std::unique_ptr<ProcessGrid> build_process_grid();
  // The communicator of a grid axis split over more than one rank; null otherwise (or without a grid).
  Communicator* split_axis(Axis axis) const;
  // Every rank's bytes of params, grads, optimizer state and the last step's activations,
  // printed together by the main rank (a collective).
  void report_memory();
  size_t step_resident_bytes_ = 0;  // allocated at the start of the last step
  // This rank's part of a batch every rank of its dp replica read: its sequence-parallel slice.
  Batch sliced(Batch batch) const;
  void log(const StepRecord& r);
  void restore(const std::string& dir);
  // What this rank reads and writes in a checkpoint: every param (a shard at its place in
  // the logical tensor) and the optimizer state.
  CheckpointContents checkpoint_contents(const std::vector<NamedTensor>& state);

  RunConfig config_;
  TrainerMode mode_;
  bool main_rank_ = true;  // world rank 0 (the only one that prints)
  bool verbose_;
  Device device_;                 // where the model, its gradients and the optimizer state live
  std::shared_ptr<Communicator> world_;
  std::unique_ptr<ProcessGrid> grid_;
  // dp x sp: the ranks whose gradients sum (null when one); set before the task is built.
  Communicator* data_group_ = nullptr;
  std::vector<GradGroup> grad_groups_;                   // dense first, then expert params (if any)
  std::vector<std::unique_ptr<DataParallel>> reducers_;  // one per group; null where a group is not reduced
  DataParallel* dp_ = nullptr;                           // the dense group's (ZeRO, the optimizer's layout)
  std::unique_ptr<PipelineExecutor> pipeline_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::shared_ptr<const TokenStore> store_;
  std::unique_ptr<Loader> train_loader_, valid_loader_;
  std::unique_ptr<Task> task_;  // what the run trains: its models, micro-batches, losses and metrics
  TransformerLM* model_ = nullptr;  // the task's trainable model
  std::vector<Param*> trainable_;
  std::unique_ptr<Optimizer> optimizer_;
  int64_t step_ = 0;
  double last_val_loss_ = std::nan("");
  std::vector<std::pair<std::string, double>> eval_metrics_;
  std::vector<StepRecord> history_;
  NumericsGuard guard_;
  std::unique_ptr<MetricsLogger> metrics_;
  std::unique_ptr<PeerWatchdog> watchdog_;
  StopReason stop_reason_ = StopReason::Finished;
  std::string stop_message_;
};

}  // namespace anvil
