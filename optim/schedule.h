// Learning-rate schedules: linear warmup, then constant, cosine, linear or
// warmup-stable-decay (WSD) down to min_lr_ratio * peak.
#pragma once
#include <cstdint>
#include <string>

namespace anvil {

struct ScheduleConfig {
  std::string kind = "cosine";  // constant | cosine | linear | wsd
  double peak_lr = 1e-3;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1000;
  double min_lr_ratio = 0.1;
  double decay_fraction = 0.2;  // wsd: the last fraction of steps that decays
};

void validate_schedule(const ScheduleConfig& s);  // throws naming the field
// The learning rate of 0-based `step`: warmup ramps (step+1)/warmup * peak.
double learning_rate(const ScheduleConfig& s, int64_t step);

}  // namespace anvil
