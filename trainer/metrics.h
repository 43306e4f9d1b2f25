// What a run reports, and where: metrics.jsonl (one JSON object per step, plus validation
// lines), TensorBoard event files (<out_dir>/tensorboard, trainer/tensorboard.h), the log line
// every logging.every steps, and on a terminal a progress line redrawn every step (step/total,
// ETA, tokens/s, loss). Model FLOPs utilisation is stated against a named peak: a device in
// the peak table, or logging.peak_tflops, and otherwise 'unknown' (never a guess). Every step
// also carries each rank's step time and the part of it spent blocked in communication.
#pragma once
#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/device.h"
#include "models/config.h"
#include "parallel/communicator.h"

namespace anvil {

struct RunConfig;
struct StepRecord;
class TensorBoardWriter;

// Model FLOPs of one training step per token (forward + backward = 3 x forward): every
// projection and the LM head at 2 FLOPs per weight, causal attention's QK^T and AV at half the
// square. Embedding lookups, norms and activations are not counted (as in the PaLM paper's MFU).
double training_flops_per_token(const ModelConfig& model, int64_t seq_len);

struct PeakFlops {
  std::string device;  // "NVIDIA H100 80GB HBM3", or the CPU's model name
  double tflops = 0;   // per device; 0 = unknown
  std::string basis;   // where the figure comes from ("table: H100, bf16 dense", "logging.peak_tflops")
  bool known() const { return tflops > 0; }
  std::string describe() const;  // "peak 989 TFLOP/s for NVIDIA H100 ... (table: bf16 dense)" or "... unknown ..."
};

// The peak of `device_name` at `precision` (run.precision: bf16 | fp32) from the table (by
// substring, longest match first), or unknown; `override_tflops` > 0 replaces it.
PeakFlops lookup_peak_flops(const std::string& device_name, double override_tflops,
                            const std::string& precision = "bf16");
// A device's name: the GPU's product name, or the CPU model from /proc/cpuinfo.
std::string device_name(Device device);

// One step's timing on every rank, and whether any rank asked to stop (preemption).
struct StepSync {
  bool stop = false;
  std::vector<double> step_ms, comm_ms;  // indexed by world rank
};
// A collective over `world` (every rank calls it once per step); without a world, this rank's own.
StepSync sync_step(Communicator* world, bool stop_requested, double step_ms, double comm_ms);

class MetricsLogger {
 public:
  // `device`: where this rank trains (its name picks the MFU peak, at run.precision).
  // `writer`: this rank writes files; `verbose`: it prints. On resume (`resume_step` > 0)
  // metrics.jsonl keeps only the lines up to that step, so a rerun after a crash does not
  // repeat steps.
  MetricsLogger(const RunConfig& config, Device device, bool writer, bool verbose, int64_t resume_step);
  ~MetricsLogger();

  void step(const StepRecord& r);
  // The validation loss and the task's own evaluation metrics (Task::eval_metrics): metrics.jsonl
  // val_<name>, TensorBoard val/<name>.
  // `perplexity`: the loss is a cross-entropy, so its exp is printed beside it.
  void validation(int64_t step, double loss, const std::vector<std::pair<std::string, double>>& task_metrics = {},
                  bool perplexity = true);
  // A line for the console that must not collide with the progress line.
  void print(const std::string& line);
  const PeakFlops& peak() const { return peak_; }
  double flops_per_token() const { return flops_per_token_; }

 private:
  const RunConfig& config_;
  bool writer_, verbose_, progress_;
  std::ofstream jsonl_;
  std::unique_ptr<TensorBoardWriter> tb_;
  PeakFlops peak_;
  double flops_per_token_ = 0;
  int world_ = 1;
  int64_t first_step_ = -1;
  std::chrono::steady_clock::time_point t_first_;
  bool progress_drawn_ = false;
};

// "3h02m", "4m12s", "9s".
std::string format_duration(double seconds);

}  // namespace anvil
