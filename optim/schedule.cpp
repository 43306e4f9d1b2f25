#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace anvil {

void validate_schedule(const ScheduleConfig& s) {
  ANVIL_CHECK(s.kind == "constant" || s.kind == "cosine" || s.kind == "linear" || s.kind == "wsd",
              "schedule.kind '", s.kind, "' is unknown — use constant, cosine, linear or wsd");
  ANVIL_CHECK(s.peak_lr > 0 && std::isfinite(s.peak_lr), "optimizer.lr = ", s.peak_lr, " must be positive");
  ANVIL_CHECK(s.warmup_steps >= 0, "schedule.warmup_steps = ", s.warmup_steps, " must be >= 0");
  ANVIL_CHECK(s.total_steps > 0, "schedule total steps = ", s.total_steps, " must be positive");
  ANVIL_CHECK(s.warmup_steps <= s.total_steps, "schedule.warmup_steps = ", s.warmup_steps,
              " exceeds the run's ", s.total_steps, " steps — lower the warmup or train longer");
  ANVIL_CHECK(s.min_lr_ratio >= 0 && s.min_lr_ratio <= 1, "schedule.min_lr_ratio = ", s.min_lr_ratio,
              " must be in [0, 1]");
  ANVIL_CHECK(s.decay_fraction > 0 && s.decay_fraction <= 1, "schedule.decay_fraction = ", s.decay_fraction,
              " must be in (0, 1]");
}

double learning_rate(const ScheduleConfig& s, int64_t step) {
  if (step < s.warmup_steps) return s.peak_lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  if (s.kind == "constant") return s.peak_lr;
  const double floor = s.peak_lr * s.min_lr_ratio;
  int64_t decay_start = s.warmup_steps;
  if (s.kind == "wsd") {
    decay_start = std::max(s.warmup_steps,
                           s.total_steps - static_cast<int64_t>(std::ceil(s.decay_fraction * s.total_steps)));
    if (step < decay_start) return s.peak_lr;
  }
  const double span = static_cast<double>(std::max<int64_t>(1, s.total_steps - decay_start));
  const double progress = std::min(1.0, static_cast<double>(step - decay_start) / span);
  if (s.kind == "cosine") return floor + (s.peak_lr - floor) * 0.5 * (1.0 + std::cos(M_PI * progress));
  return floor + (s.peak_lr - floor) * (1.0 - progress);  // linear and wsd's decay
}

}  // namespace anvil
