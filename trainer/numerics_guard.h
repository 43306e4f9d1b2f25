// The numerics guard: after each step's loss and gradient norm are known (reduced over
// every rank, so all ranks decide alike) and before the optimizer applies the step, it
// decides to apply the step, skip it (no parameter or optimizer-state change; the step
// number, the data position and the schedule still advance, as in Megatron's skipped
// iterations), or stop the run. Triggers: a non-finite loss or gradient norm, and a loss
// spike, i.e. a z-score above guard.spike_zscore against the last guard.spike_window
// applied steps (only once that window is full; upward spikes only). Too many skips in a
// row stop the run: a run that skips forever has diverged.
// Its state (the loss window, the counters) rides in the checkpoint, so resume is exact.
#pragma once
#include <cstdint>
#include <deque>
#include <map>
#include <string>

namespace anvil {

struct GuardConfig {
  std::string on_nonfinite = "stop";  // skip | stop
  double spike_zscore = 0;            // 0 = no spike test
  int64_t spike_window = 100;         // applied steps the z-score looks back on
  std::string on_spike = "skip";      // skip | stop
  int64_t max_consecutive_skips = 10; // then stop; 0 = never stop for this reason
};

enum class GuardVerdict { Apply, Skip, Stop };

struct GuardDecision {
  GuardVerdict verdict = GuardVerdict::Apply;
  std::string reason;  // why it skipped or stopped ("loss is nan", "loss spike: z = 8.1 > 6")
};

class NumericsGuard {
 public:
  explicit NumericsGuard(GuardConfig config = {}) : config_(std::move(config)) {}

  // The verdict for step `step` (1-based) with these reduced values; records the loss of an
  // applied step in the window.
  GuardDecision check(int64_t step, double loss, double grad_norm);

  int64_t skipped_total() const { return skipped_total_; }
  const GuardConfig& config() const { return config_; }

  // Checkpoint counters under "guard.*" (doubles as their bit patterns).
  void save(std::map<std::string, int64_t>& counters) const;
  void restore(const std::map<std::string, int64_t>& counters);

 private:
  GuardConfig config_;
  std::deque<double> window_;  // losses of the last applied steps, oldest first
  int64_t skipped_total_ = 0;
  int64_t consecutive_ = 0;
};

}  // namespace anvil
