// What the distill end-to-end tests share: the tiny trained target (built once per test process
// in its own directory, removed at exit), a distill run config on it, the error text of a
// refused call, a step's task metric, the relative difference the layout tests bound, and what
// a naive first-step loop reads (the resolved config, a training loader of the run's settings,
// the target).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "tests/support/tiny_run.h"
#include "trainer/load_model.h"
#include "trainer/trainer.h"

namespace anvil::testing {

// The tiny Llama trained 30 steps in dir + "/target", under `name` (a test binary passes one
// name; ctest runs each of its tests as a process of its own, each building its own run).
inline const TinyRun& distill_target_run(const std::string& name) {
  static const TinyRun run = make_tiny_target_run(name);
  static const struct RemoveAtExit {  // the directory is this process's alone
    ~RemoveAtExit() { std::filesystem::remove_all(run.dir); }
  } remove_at_exit;
  return run;
}

// A distill run of `run` writing to dir/label: the target, no resume, no warm-up, then the
// drafter's own `sets` and the test's `extra` (which win).
inline RunConfig distill_run_config(const TinyRun& run, const std::string& label, std::vector<std::string> sets,
                                    const std::vector<std::string>& extra) {
  std::vector<std::string> all = {"run.out_dir=" + run.dir + "/" + label, "checkpoint.resume=none",
                                  "task.name=distill", "distill.target=" + run.dir + "/target",
                                  "schedule.warmup_steps=0"};
  all.insert(all.end(), sets.begin(), sets.end());
  all.insert(all.end(), extra.begin(), extra.end());
  return load_run_config(run.config, all);
}

// The message of the anvil::Error that f throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// The task metric `name` of a step (a test failure, and NaN, when the step has none).
inline double metric(const StepRecord& r, const std::string& name) {
  for (const auto& [key, value] : r.task_metrics)
    if (key == name) return value;
  ADD_FAILURE() << "no task metric " << name;
  return NAN;
}

// |a − b| relative to |b|.
inline double rel(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-30); }

// A naive first-step loop's inputs: the config with its vocabulary resolved, a loader of the
// run's training split (its first batches are the first step's micro-batches), the target.
struct FirstStepInputs {
  RunConfig config;
  Loader loader;
  LoadedModel target;

  explicit FirstStepInputs(const RunConfig& run)
      : config(resolved(run)),
        loader(std::make_shared<const TokenStore>(TokenStore::open(config.data.train)), loader_config(config),
               Split::Train),
        target(load_model(config.distill.target)) {}

 private:
  static RunConfig resolved(RunConfig c) {
    resolve_vocab_size(c, Tokenizer::load(c.tokenizer.path).vocab_size());
    return c;
  }
};

}  // namespace anvil::testing
