// The user-facing side of Medusa decoding: `anvil generate --medusa` (medusa_complete_text) and
// `anvil eval medusa` (run_medusa_eval: Medusa against plain KV-cached decoding of the same base on
// the same prompts and threads, per temperature, as a table and as JSON).
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "eval/medusa_decode.h"

namespace anvil {

// complete_text (eval/generate.h) with Medusa: the prompt followed by the text of up to `tokens`
// new tokens, stopping at `eos` (>= 0). Fewer tokens when the positions run out (prompt + tokens +
// tree nodes − 1 must fit). `stats` receives the decoding's measurements.
std::string medusa_complete_text(TransformerLM& base, MedusaHeads& heads, const MedusaTree& tree,
                                 const Tokenizer& tokenizer, const std::string& prompt, int64_t tokens,
                                 const SamplingConfig& config, const MedusaAcceptance& acceptance, int32_t eos,
                                 SpeculativeStats* stats = nullptr);

struct MedusaEvalOptions {
  std::vector<double> temperatures{0, 1};
  int max_new_tokens = 64;
  int64_t batch_size = 1;  // prompts decoded together (1: one sequence at a time, the latency case)
  int64_t top_k = 0;       // the same filters for both runs, at every temperature
  double top_p = 1.0;
  uint64_t seed = 0;
  std::optional<int32_t> stop_token;
  // The rule at T > 0 (lossless or typical); T = 0 decodes greedily whatever the mode.
  MedusaAcceptance acceptance;
};

// One temperature: the Medusa run and the plain run of the base on the same prompts.
struct MedusaEvalCase {
  double temperature = 0;
  MedusaMode mode = MedusaMode::Greedy;
  SpeculativeStats medusa;
  int64_t plain_tokens = 0;
  double plain_seconds = 0;
  bool same_tokens = false;  // Medusa's output == plain output (guaranteed at temperature 0)

  double plain_tokens_per_second() const { return plain_seconds > 0 ? plain_tokens / plain_seconds : 0.0; }
  double speedup() const;  // Medusa tokens/s over plain tokens/s
};

// Every case's checks run before any decoding.
std::vector<MedusaEvalCase> run_medusa_eval(TransformerLM& base, MedusaHeads& heads, const MedusaTree& tree,
                                            const std::vector<std::vector<int32_t>>& prompts,
                                            const MedusaEvalOptions& options);

// The report: one row per temperature (mode, τ, acceptance per head, base forwards per token,
// tokens/s with and without Medusa, speedup) under a line defining τ.
std::string medusa_eval_table(const std::vector<MedusaEvalCase>& cases);
nlohmann::json medusa_eval_json(const std::vector<MedusaEvalCase>& cases);

}  // namespace anvil
