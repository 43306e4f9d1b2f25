// The user-facing side of speculative decoding: `anvil generate --draft` (speculative_complete_text)
// and `anvil eval spec` (run_spec_eval: speculative against plain KV-cached decoding of the same
// target on the same prompts and threads, per γ and temperature, as a table and as JSON).
#pragma once
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "eval/speculative.h"
#include "eval/tree_speculative.h"

namespace anvil {

// complete_text (eval/generate.h) with a drafter: the prompt followed by the text of up to
// `tokens` new tokens, stopping at `eos` (>= 0). Fewer tokens when the models' positions run out
// (prompt + tokens + gamma − 1 must fit both). `stats` receives the decoding's measurements.
// A fresh drafter for one decoding call: an LMDrafter over a standalone LM, a ParallelSpecDrafter
// over an LM with mask tokens, an EagleChainDrafter over an EAGLE drafter (apps/spec_commands.h's
// LoadedDrafter::factory makes the right one).
using DrafterFactory = std::function<std::unique_ptr<Drafter>()>;
// The factory of drafters over a drafter LM: ParallelSpec when it has mask tokens, else standalone
// (make_model_drafter).
DrafterFactory model_drafter_factory(TransformerLM& drafter);

std::string speculative_complete_text(TransformerLM& target, const DrafterFactory& drafter, const Tokenizer& tokenizer,
                                      const std::string& prompt, int64_t tokens, const SamplingConfig& config,
                                      int gamma, int32_t eos, SpeculativeStats* stats = nullptr);

// A fresh tree drafter for one decoding call (eval/tree_speculative.h).
using TreeDrafterFactory = std::function<std::unique_ptr<TreeDrafter>()>;
// The factory of LMTreeDrafters over a standalone drafter LM; refuses at once what LMTreeDrafter
// refuses (ParallelSpec mask tokens, a sliding window).
TreeDrafterFactory model_tree_drafter_factory(TransformerLM& drafter);

// speculative_complete_text with a tree of `width` candidates per node, `depth` levels deep
// (prompt + tokens + tree nodes − 1 must fit both models' positions, else fewer tokens).
std::string tree_complete_text(TransformerLM& target, const TreeDrafterFactory& drafter, const Tokenizer& tokenizer,
                               const std::string& prompt, int64_t tokens, const SamplingConfig& config, int width,
                               int depth, int32_t eos, SpeculativeStats* stats = nullptr);

struct SpecEvalOptions {
  std::vector<int> gammas{2, 4, 6};
  std::vector<double> temperatures{0, 1};
  int max_new_tokens = 64;
  int64_t batch_size = 1;  // prompts decoded together (1: one sequence at a time, the latency case)
  int64_t top_k = 0;       // the same filters for both runs, at every temperature
  double top_p = 1.0;
  uint64_t seed = 0;
  std::optional<int32_t> stop_token;
  // > 1: verify trees of this width with each gamma as the depth (tree_speculative_generate,
  // run_spec_eval's tree drafter); 1: chains.
  int tree_width = 1;
};

// One (γ, temperature) cell: the speculative run and the plain run of the target on the same prompts.
struct SpecEvalCase {
  int gamma = 0;       // the draft length, or the tree's depth
  int tree_width = 1;  // 1: a chain
  double temperature = 0;
  SpeculativeStats spec;
  int64_t plain_tokens = 0;
  double plain_seconds = 0;
  bool same_tokens = false;  // speculative output == plain output (guaranteed at temperature 0)

  double plain_tokens_per_second() const { return plain_seconds > 0 ? plain_tokens / plain_seconds : 0.0; }
  double speedup() const;  // speculative tokens/s over plain tokens/s
};

// With options.tree_width > 1 the cases decode with `tree` (which must then be set); the checks
// of every case (tree size against the positions among them) run before any decoding.
std::vector<SpecEvalCase> run_spec_eval(TransformerLM& target, const DrafterFactory& drafter,
                                        const std::vector<std::vector<int32_t>>& prompts, const SpecEvalOptions& options,
                                        const TreeDrafterFactory& tree = nullptr);

// One decoding call of a speculative decoder (chain, tree, self-speculative): new tokens per
// prompt and the stats, under speculative_generate's contract.
using ChainDecodeFn = std::function<SpeculativeResult(const std::vector<std::vector<int32_t>>& prompts,
                                                      int max_new_tokens, const SamplingConfig& config, int gamma,
                                                      std::optional<int32_t> stop_token)>;
// run_spec_eval's measurement for any decoder: per temperature and gamma, `decode` then plain
// generate() of `target` on each batch_size chunk of the prompts (after an untimed warm-up of both).
std::vector<SpecEvalCase> run_decode_eval(TransformerLM& target, const ChainDecodeFn& decode,
                                          const std::vector<std::vector<int32_t>>& prompts, const SpecEvalOptions& options);

// The report: one row per case (τ, acceptance by position, target forwards per token, c,
// tokens/s with and without speculation, speedup) under a line defining τ.
std::string spec_eval_table(const std::vector<SpecEvalCase>& cases);
nlohmann::json spec_eval_json(const std::vector<SpecEvalCase>& cases);
// The fields every decoding report shares (spec_eval_json, medusa_eval_json): the decode's time
// and speed beside the plain decoding of the same prompts it is measured against.
nlohmann::json decode_speed_json(const SpeculativeStats& st, int64_t plain_tokens, double plain_seconds, double speedup,
                                 bool same_tokens);

}  // namespace anvil
