// A tiny but real training setup for end-to-end tests: a tokenizer trained on a
// text that every Debian system ships (the GPL), a token store prepared from it,
// and a YAML run config for a small Llama model, all under a fresh directory.
#pragma once
#include <string>

namespace anvil::testing {

struct TinyRun {
  std::string dir;          // everything lives here
  std::string corpus;       // the text
  std::string tokenizer;    // tokenizer.json
  std::string store;        // token store (.h5)
  std::string config;       // run config (YAML)
};

// `extra_yaml` is appended to the config (e.g. to add a bad key). Steps default to 20.
TinyRun make_tiny_run(const std::string& name, const std::string& extra_yaml = "");

// A tiny run plus a distillation target in dir + "/target": the tiny Llama trained `steps` steps,
// so its distributions are far from a fresh drafter's. The directory carries the process id:
// ctest runs the tests of one binary as parallel processes, each building its own.
TinyRun make_tiny_target_run(const std::string& name, int steps = 30);

// Runs a shell command; returns its exit status and puts stdout+stderr in `output`.
int run_command(const std::string& command, std::string& output);
// run_command that expects exit status 0 (a failure names the command and its output); returns the output.
std::string must_run(const std::string& command);

}  // namespace anvil::testing
