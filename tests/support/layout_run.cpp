#include "tests/support/layout_run.h"

namespace anvil::testing {

std::string Layout::label() const {
  std::string s;
  auto add = [&](const char* axis, int d) {
    if (d > 1) s += (s.empty() ? "" : "x") + std::string(axis) + std::to_string(d);
  };
  add("dp", dp), add("tp", tp), add("pp", pp), add("sp", sp);
  if (s.empty()) s = "single";
  if (zero) s += "+zero" + std::to_string(zero);
  if (pp > 1 && !schedule.empty()) s += "+" + schedule;
  return s;
}

std::vector<std::string> layout_run_settings(const Layout& l, const std::string& out_dir, int64_t steps,
                                             int64_t global_micro_batch, int64_t grad_accum,
                                             std::optional<int64_t> warmup_steps) {
  std::vector<std::string> sets = {"run.out_dir=" + out_dir,
                                   "checkpoint.dir=" + out_dir + "/checkpoints",
                                   "checkpoint.resume=none",
                                   "run.threads=1",
                                   "training.steps=" + std::to_string(steps),
                                   "training.micro_batch_size=" + std::to_string(global_micro_batch / l.dp),
                                   "training.grad_accum_steps=" + std::to_string(grad_accum),
                                   "training.eval_every=0",
                                   "training.sample_every=0",
                                   "checkpoint.every=0",
                                   "checkpoint.keep=0",
                                   "parallel.dp=" + std::to_string(l.dp),
                                   "parallel.tp=" + std::to_string(l.tp),
                                   "parallel.pp=" + std::to_string(l.pp),
                                   "parallel.sp=" + std::to_string(l.sp),
                                   "optimizer.zero=" + std::to_string(l.zero)};
  if (warmup_steps) sets.push_back("schedule.warmup_steps=" + std::to_string(*warmup_steps));
  if (l.pp > 1 && !l.schedule.empty()) sets.push_back("parallel.pp_schedule=" + l.schedule);
  return sets;
}

}  // namespace anvil::testing
