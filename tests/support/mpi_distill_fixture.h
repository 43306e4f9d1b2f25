// The distill fixture (tests/support/distill_fixture.h) for multi-rank tests: a tiny run and its
// trained target shared by every rank of the job.
#pragma once
#include <string>
#include <vector>

#include "tests/support/distill_fixture.h"
#include "tests/support/mpi_world.h"

namespace anvil::testing {

// shared_tiny_run(name) plus a distillation target in dir + "/target" (the tiny Llama trained 30
// steps, one thread; `settings` are applied after these, e.g. another layer count), written once by
// rank 0 (a collective).
inline TinyRun shared_tiny_target_run(const std::string& name, const std::vector<std::string>& settings = {}) {
  TinyRun r = shared_tiny_run(name);
  if (is_root()) {
    std::vector<std::string> sets = {"run.out_dir=" + r.dir + "/target", "training.steps=30", "training.eval_every=0",
                                     "checkpoint.resume=none", "run.threads=1"};
    sets.insert(sets.end(), settings.begin(), settings.end());
    Trainer target(load_run_config(r.config, sets), TrainerMode::Quiet);
    target.train();
  }
  world()->barrier();
  return r;
}

}  // namespace anvil::testing
