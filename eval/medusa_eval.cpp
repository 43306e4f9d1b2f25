// `anvil generate --medusa` and `anvil eval medusa` (see the header).
#include "eval/medusa_eval.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>

#include "eval/spec_eval.h"

namespace anvil {

namespace {
const char* const kTauDefinition =
    "tau = tokens committed per base forward of a sequence, the next token included (tree depth + 1 when a whole "
    "path is accepted, 1 when no candidate is)";

// The mode a case decodes with: greedy at T = 0, the chosen rule above.
MedusaAcceptance case_acceptance(const MedusaAcceptance& a, double temperature) {
  MedusaAcceptance out = a;
  if (temperature == 0) out.mode = MedusaMode::Greedy;
  return out;
}
}  // namespace

std::string medusa_complete_text(TransformerLM& base, MedusaHeads& heads, const MedusaTree& tree,
                                 const Tokenizer& tokenizer, const std::string& prompt, int64_t tokens,
                                 const SamplingConfig& config, const MedusaAcceptance& acceptance, int32_t eos,
                                 SpeculativeStats* stats) {
  std::vector<int32_t> ids = tokenizer.encode(prompt);
  if (ids.empty()) ids.push_back(eos >= 0 ? eos : 0);  // an empty prompt starts a new document
  const int64_t room = base.config().max_position_embeddings - static_cast<int64_t>(ids.size()) - (tree.nodes() - 1);
  const SpeculativeResult r =
      medusa_generate(base, heads, tree, {ids}, static_cast<int>(std::max<int64_t>(0, std::min(tokens, room))), config,
                      acceptance, eos >= 0 ? std::optional<int32_t>(eos) : std::nullopt);
  if (stats) *stats = r.stats;
  return prompt + tokenizer.decode(r.tokens[0]);
}

double MedusaEvalCase::speedup() const {
  const double plain = plain_tokens_per_second();
  return plain > 0 ? medusa.tokens_per_second() / plain : 0.0;
}

std::vector<MedusaEvalCase> run_medusa_eval(TransformerLM& base, MedusaHeads& heads, const MedusaTree& tree,
                                            const std::vector<std::vector<int32_t>>& prompts,
                                            const MedusaEvalOptions& o) {
  ANVIL_CHECK(!prompts.empty(), "eval medusa: no prompts — pass --prompts FILE or --data STORE");
  ANVIL_CHECK(o.batch_size >= 1, "eval medusa: the batch size must be >= 1, got ", o.batch_size);
  ANVIL_CHECK(!o.temperatures.empty(), "eval medusa: give at least one temperature");
  std::vector<SamplingConfig> configs;
  for (double temperature : o.temperatures) {  // every case's checks, before any work
    SamplingConfig cfg;
    cfg.temperature = temperature, cfg.top_k = o.top_k, cfg.top_p = o.top_p, cfg.seed = o.seed;
    check_medusa_decoding(base, heads, tree, prompts, o.max_new_tokens, cfg, case_acceptance(o.acceptance, temperature),
                          o.stop_token);
    configs.push_back(cfg);
  }
  using Clock = std::chrono::steady_clock;
  {  // Untimed warm-up of both paths (thread pool, first allocations), so the first case is not charged for it.
    const SamplingConfig greedy = SamplingConfig::greedy();
    medusa_generate(base, heads, tree, {prompts[0]}, 2, greedy, case_acceptance(o.acceptance, 0));
    generate(base, {prompts[0]}, 2, greedy);
  }
  std::vector<MedusaEvalCase> cases;
  for (const SamplingConfig& cfg : configs) {
    MedusaEvalCase c;
    c.temperature = cfg.temperature;
    const MedusaAcceptance acceptance = case_acceptance(o.acceptance, cfg.temperature);
    c.mode = acceptance.mode;
    c.same_tokens = true;
    bool first = true;
    // Medusa then plain on each chunk of prompts, so both see the same machine state.
    for (size_t begin = 0; begin < prompts.size(); begin += static_cast<size_t>(o.batch_size)) {
      const size_t end = std::min(prompts.size(), begin + static_cast<size_t>(o.batch_size));
      const std::vector<std::vector<int32_t>> chunk(prompts.begin() + begin, prompts.begin() + end);
      const SpeculativeResult medusa =
          medusa_generate(base, heads, tree, chunk, o.max_new_tokens, cfg, acceptance, o.stop_token);
      const Clock::time_point t0 = Clock::now();
      const auto plain = generate(base, chunk, o.max_new_tokens, cfg, o.stop_token);
      c.plain_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
      for (const auto& row : plain) c.plain_tokens += static_cast<int64_t>(row.size());
      if (first)
        c.medusa = medusa.stats;
      else
        c.medusa.add(medusa.stats);
      first = false;
      c.same_tokens = c.same_tokens && medusa.tokens == plain;
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

std::string medusa_eval_table(const std::vector<MedusaEvalCase>& cases) {
  std::ostringstream s;
  s << kTauDefinition << "; acceptance of head k is given heads 1..k-1 accepted (tree level k)\n";
  char line[512];
  std::snprintf(line, sizeof line, "%5s %-8s %6s %-28s %8s %12s %11s %8s %5s\n", "T", "mode", "tau",
                "acceptance per head", "fwd/tok", "medusa tok/s", "plain tok/s", "speedup", "same");
  s << line;
  for (const MedusaEvalCase& c : cases) {
    std::string per_head;
    char cell[16];
    for (int i = 0; i < c.medusa.gamma; ++i) {
      std::snprintf(cell, sizeof cell, "%s%.2f", i ? " " : "", c.medusa.acceptance_at(i));
      per_head += cell;
    }
    std::snprintf(line, sizeof line, "%5.2g %-8s %6.3f %-28s %8.3f %12.1f %11.1f %7.2fx %5s\n", c.temperature,
                  medusa_mode_name(c.mode), c.medusa.tau(), per_head.c_str(), c.medusa.target_forwards_per_token(),
                  c.medusa.tokens_per_second(), c.plain_tokens_per_second(), c.speedup(), c.same_tokens ? "yes" : "no");
    s << line;
  }
  return s.str();
}

nlohmann::json medusa_eval_json(const std::vector<MedusaEvalCase>& cases) {
  nlohmann::json out = nlohmann::json::array();
  for (const MedusaEvalCase& c : cases) {
    const SpeculativeStats& st = c.medusa;
    std::vector<double> per_head;
    for (int i = 0; i < st.gamma; ++i) per_head.push_back(st.acceptance_at(i));
    out.push_back({{"temperature", c.temperature},
                   {"mode", medusa_mode_name(c.mode)},
                   {"tree_nodes", st.tree_nodes},
                   {"tree_depth", st.gamma},
                   {"tau", st.tau()},
                   {"tau_definition", kTauDefinition},
                   {"acceptance_rate", st.acceptance_rate()},
                   {"acceptance_per_head", per_head},
                   {"base_forwards_per_token", st.target_forwards_per_token()},
                   {"base_calls", st.target_calls},
                   {"heads_seconds", st.draft_seconds},
                   {"base_seconds", st.target_seconds}});
    out.back().update(decode_speed_json(st, c.plain_tokens, c.plain_seconds, c.speedup(), c.same_tokens));
  }
  return out;
}

}  // namespace anvil
