// The speculative-decoding commands of the CLI: `anvil eval spec` and the drafter half of
// `anvil generate --draft` (apps/anvil.cpp parses the flags).
#pragma once
#include <string>
#include <vector>

#include "eval/spec_eval.h"
#include "models/eagle_drafter.h"
#include "trainer/load_model.h"

namespace CLI {
class App;
}  // namespace CLI

namespace anvil {

struct EvalSpecArgs {
  std::string target, draft;
  std::string prompts_file;  // one prompt per line, or
  std::string data;          // a token store: the first prompt_tokens of its held-out documents
  std::string json;          // where to write the JSON report (optional)
  std::vector<int> gammas{2, 4, 6};
  int tree_width = 1;  // > 1: trees of this width, each gamma their depth
  std::vector<double> temperatures{0, 1};
  int max_tokens = 64;
  int64_t num_prompts = 8, prompt_tokens = 16, batch_size = 1, top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  std::vector<std::string> overrides;  // --set for the target's stored config
};

// A drafter loaded for decoding against a target: a standalone LM (`model`), or an EAGLE
// drafter (`eagle`: a distill.drafter: eagle checkpoint, built on the target's embedding, head
// and layers, its own params read from the checkpoint).
struct LoadedDrafter {
  std::string source;  // the directory read
  LoadedModel model;
  std::unique_ptr<EagleDrafter> eagle;
  DrafterFactory factory();
  // Tree drafters (a standalone LM only: EAGLE and ParallelSpec drafters draft chains here).
  TreeDrafterFactory tree_factory();
};

// The drafter at `path` (an anvil checkpoint or a Hugging Face directory) on the target's device
// and in its dtype. Refuses a drafter whose tokenizer differs from the target's (when both name
// one); speculative_generate then checks the vocabulary sizes.
LoadedDrafter load_drafter(const std::string& path, const LoadedModel& target);

int run_eval_spec(const EvalSpecArgs& args);

// `anvil eval selfspec`: early-exit self-speculation (eval/self_speculative.h) of one model
// against its plain decoding, one table per exit layer. spec.target is --checkpoint; spec.draft
// and spec.tree_width are unused.
struct EvalSelfSpecArgs {
  EvalSpecArgs spec;
  std::vector<int64_t> exit_layers;
};
int run_eval_selfspec(const EvalSelfSpecArgs& args);
// The flags `eval spec` and `eval selfspec` share (prompts, temperatures, lengths, batch, filters,
// seed, --json, --set), and the `eval selfspec` subcommand under `eval`.
void add_decode_eval_flags(CLI::App* cmd, EvalSpecArgs& args);
CLI::App* add_eval_selfspec_command(CLI::App* eval_cmd, EvalSelfSpecArgs& args);

// What `eval spec` and `eval medusa` read prompts with (`command` names the caller in errors).
// The tokenizer a loaded model names, or null when it names none that exists.
std::unique_ptr<Tokenizer> tokenizer_of(const LoadedModel& m);
// One prompt per non-blank line of `path`, encoded.
std::vector<std::vector<int32_t>> prompts_from_file(const std::string& path, const Tokenizer& tokenizer,
                                                    const std::string& command);
// The first `length` tokens of up to `count` held-out documents of `path` (the model's validation
// split when its config has one, else every document: a store of held-out text); `source`
// receives a description of where they came from.
std::vector<std::vector<int32_t>> prompts_from_store(const std::string& path, const LoadedModel& model,
                                                     const Tokenizer* tokenizer, int64_t count, int64_t length,
                                                     std::string& source, const std::string& command);

}  // namespace anvil
