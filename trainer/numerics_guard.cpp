#include "trainer/numerics_guard.h"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace anvil {

namespace {
int64_t double_bits(double x) {
  int64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}
double from_bits(int64_t b) {
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}
std::string number(double x) {
  if (std::isnan(x)) return "nan";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", x);
  return buf;
}
}  // namespace

GuardDecision NumericsGuard::check(int64_t step, double loss, double grad_norm) {
  GuardDecision d;
  const std::string* action = nullptr;
  if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
    d.reason = !std::isfinite(loss) ? "loss is " + number(loss) : "gradient norm is " + number(grad_norm);
    action = &config_.on_nonfinite;
  } else if (config_.spike_zscore > 0 && static_cast<int64_t>(window_.size()) == config_.spike_window) {
    double mean = 0, var = 0;
    for (double x : window_) mean += x;
    mean /= static_cast<double>(window_.size());
    for (double x : window_) var += (x - mean) * (x - mean);
    const double sd = std::sqrt(var / static_cast<double>(window_.size()));
    const double z = sd > 0 ? (loss - mean) / sd : 0.0;
    if (z > config_.spike_zscore) {
      d.reason = "loss spike: " + number(loss) + " is " + number(z) + " standard deviations above the mean " +
                 number(mean) + " of the last " + std::to_string(window_.size()) + " steps (guard.spike_zscore = " +
                 number(config_.spike_zscore) + ")";
      action = &config_.on_spike;
    }
  }
  if (!action) {
    consecutive_ = 0;
    window_.push_back(loss);
    if (static_cast<int64_t>(window_.size()) > config_.spike_window) window_.pop_front();
    return d;
  }
  if (*action == "stop") {
    d.verdict = GuardVerdict::Stop;
    return d;
  }
  ++skipped_total_;
  ++consecutive_;
  d.verdict = GuardVerdict::Skip;
  if (config_.max_consecutive_skips > 0 && consecutive_ > config_.max_consecutive_skips) {
    d.verdict = GuardVerdict::Stop;
    d.reason += "; that is " + std::to_string(consecutive_) + " skipped steps in a row (guard.max_consecutive_skips = " +
                std::to_string(config_.max_consecutive_skips) + ")";
  }
  (void)step;
  return d;
}

void NumericsGuard::save(std::map<std::string, int64_t>& c) const {
  c["guard.skipped_total"] = skipped_total_;
  c["guard.consecutive"] = consecutive_;
  c["guard.window_size"] = static_cast<int64_t>(window_.size());
  for (size_t i = 0; i < window_.size(); ++i) c["guard.window." + std::to_string(i)] = double_bits(window_[i]);
}

void NumericsGuard::restore(const std::map<std::string, int64_t>& c) {
  auto get = [&](const std::string& key, int64_t fallback) {
    auto it = c.find(key);
    return it == c.end() ? fallback : it->second;
  };
  skipped_total_ = get("guard.skipped_total", 0);
  consecutive_ = get("guard.consecutive", 0);
  window_.clear();
  const int64_t n = get("guard.window_size", 0);
  for (int64_t i = 0; i < n; ++i) {
    auto it = c.find("guard.window." + std::to_string(i));
    ANVIL_CHECK(it != c.end(), "checkpoint: guard.window.", i, " is missing (guard.window_size = ", n,
                ") — the checkpoint is damaged; resume from an older one");
    window_.push_back(from_bits(it->second));
  }
  while (static_cast<int64_t>(window_.size()) > config_.spike_window) window_.pop_front();
}

}  // namespace anvil
