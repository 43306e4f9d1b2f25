// `anvil generate --draft` and `anvil eval spec` (see the header).
#include "eval/spec_eval.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>

#include "eval/parallel_spec_drafter.h"

namespace anvil {

namespace {
const char* const kTauDefinition =
    "tau = tokens committed per target forward of a sequence, the bonus token included (gamma + 1 when every draft "
    "is accepted, 1 when none is)";
}  // namespace

DrafterFactory model_drafter_factory(TransformerLM& drafter) {
  return [&drafter]() -> std::unique_ptr<Drafter> { return make_model_drafter(drafter); };
}

std::string speculative_complete_text(TransformerLM& target, const DrafterFactory& drafter, const Tokenizer& tokenizer,
                                      const std::string& prompt, int64_t tokens, const SamplingConfig& config,
                                      int gamma, int32_t eos, SpeculativeStats* stats) {
  std::vector<int32_t> ids = tokenizer.encode(prompt);
  if (ids.empty()) ids.push_back(eos >= 0 ? eos : 0);  // an empty prompt starts a new document
  const std::unique_ptr<Drafter> draft = drafter();
  const int64_t positions = std::min(target.config().max_position_embeddings, draft->max_positions());
  const int64_t room = positions - static_cast<int64_t>(ids.size()) - (gamma - 1);
  const SpeculativeResult r =
      speculative_generate(target, *draft, {ids}, static_cast<int>(std::max<int64_t>(0, std::min(tokens, room))), config,
                           gamma, eos >= 0 ? std::optional<int32_t>(eos) : std::nullopt);
  if (stats) *stats = r.stats;
  return prompt + tokenizer.decode(r.tokens[0]);
}

TreeDrafterFactory model_tree_drafter_factory(TransformerLM& drafter) {
  LMTreeDrafter check(drafter);  // refuses what cannot draft a tree, before any decoding
  return [&drafter]() -> std::unique_ptr<TreeDrafter> { return std::make_unique<LMTreeDrafter>(drafter); };
}

std::string tree_complete_text(TransformerLM& target, const TreeDrafterFactory& drafter, const Tokenizer& tokenizer,
                               const std::string& prompt, int64_t tokens, const SamplingConfig& config, int width,
                               int depth, int32_t eos, SpeculativeStats* stats) {
  std::vector<int32_t> ids = tokenizer.encode(prompt);
  if (ids.empty()) ids.push_back(eos >= 0 ? eos : 0);  // an empty prompt starts a new document
  const std::unique_ptr<TreeDrafter> draft = drafter();
  const int64_t positions = std::min(target.config().max_position_embeddings, draft->max_positions());
  const int64_t room = positions - static_cast<int64_t>(ids.size()) - (draft_tree_nodes(width, depth) - 1);
  const SpeculativeResult r =
      tree_speculative_generate(target, *draft, {ids}, static_cast<int>(std::max<int64_t>(0, std::min(tokens, room))),
                                config, width, depth, eos >= 0 ? std::optional<int32_t>(eos) : std::nullopt);
  if (stats) *stats = r.stats;
  return prompt + tokenizer.decode(r.tokens[0]);
}

double SpecEvalCase::speedup() const {
  const double plain = plain_tokens_per_second();
  return plain > 0 ? spec.tokens_per_second() / plain : 0.0;
}

std::vector<SpecEvalCase> run_spec_eval(TransformerLM& target, const DrafterFactory& drafter,
                                        const std::vector<std::vector<int32_t>>& prompts, const SpecEvalOptions& o,
                                        const TreeDrafterFactory& tree) {
  ANVIL_CHECK(!prompts.empty(), "eval spec: no prompts — pass --prompts FILE or --data STORE");
  ANVIL_CHECK(o.tree_width >= 1, "eval spec: the tree width must be >= 1 (1: chains), got ", o.tree_width);
  const bool trees = o.tree_width > 1;
  ANVIL_CHECK(!trees || tree, "eval spec: tree width ", o.tree_width, " needs a tree drafter");
  if (trees) {  // every case's tree against the cache, before any work
    const std::unique_ptr<TreeDrafter> probe = tree();
    for (int depth : o.gammas)
      for (double temperature : o.temperatures) {
        SamplingConfig cfg;
        cfg.temperature = temperature, cfg.top_k = o.top_k, cfg.top_p = o.top_p;
        check_tree_decoding(target, probe->vocab_size(), probe->max_positions(), prompts, o.max_new_tokens, cfg,
                            o.tree_width, depth, o.stop_token);
      }
  }
  const ChainDecodeFn decode = [&](const std::vector<std::vector<int32_t>>& chunk, int max_new,
                                   const SamplingConfig& cfg, int gamma, std::optional<int32_t> stop) {
    return trees ? tree_speculative_generate(target, *tree(), chunk, max_new, cfg, o.tree_width, gamma, stop)
                 : speculative_generate(target, *drafter(), chunk, max_new, cfg, gamma, stop);
  };
  return run_decode_eval(target, decode, prompts, o);
}

std::vector<SpecEvalCase> run_decode_eval(TransformerLM& target, const ChainDecodeFn& decode,
                                          const std::vector<std::vector<int32_t>>& prompts, const SpecEvalOptions& o) {
  ANVIL_CHECK(!prompts.empty(), "eval spec: no prompts — pass --prompts FILE or --data STORE");
  ANVIL_CHECK(o.batch_size >= 1, "eval spec: the batch size must be >= 1, got ", o.batch_size);
  ANVIL_CHECK(!o.gammas.empty() && !o.temperatures.empty(), "eval spec: give at least one gamma and one temperature");
  using Clock = std::chrono::steady_clock;
  {  // Untimed warm-up of both paths (thread pool, first allocations), so the first case is not charged for it.
    SamplingConfig greedy = SamplingConfig::greedy();
    decode({prompts[0]}, 2, greedy, 1, std::nullopt);
    generate(target, {prompts[0]}, 2, greedy);
  }
  std::vector<SpecEvalCase> cases;
  for (double temperature : o.temperatures) {
    for (int gamma : o.gammas) {
      SamplingConfig cfg;
      cfg.temperature = temperature;
      cfg.top_k = o.top_k;
      cfg.top_p = o.top_p;
      cfg.seed = o.seed;
      SpecEvalCase c;
      c.gamma = gamma;
      c.tree_width = o.tree_width;
      c.temperature = temperature;
      c.spec.gamma = gamma;
      c.spec.tree_width = o.tree_width;
      c.spec.reached.assign(static_cast<size_t>(std::max(gamma, 0)), 0);
      c.spec.accepted = c.spec.reached;
      c.same_tokens = true;
      // Speculative then plain on each chunk of prompts, so both see the same machine state.
      for (size_t first = 0; first < prompts.size(); first += static_cast<size_t>(o.batch_size)) {
        const size_t last = std::min(prompts.size(), first + static_cast<size_t>(o.batch_size));
        const std::vector<std::vector<int32_t>> chunk(prompts.begin() + first, prompts.begin() + last);
        const SpeculativeResult spec = decode(chunk, o.max_new_tokens, cfg, gamma, o.stop_token);
        const Clock::time_point t0 = Clock::now();
        const auto plain = generate(target, chunk, o.max_new_tokens, cfg, o.stop_token);
        c.plain_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
        for (const auto& row : plain) c.plain_tokens += static_cast<int64_t>(row.size());
        c.spec.add(spec.stats);
        c.same_tokens = c.same_tokens && spec.tokens == plain;
      }
      cases.push_back(std::move(c));
    }
  }
  return cases;
}

std::string spec_eval_table(const std::vector<SpecEvalCase>& cases) {
  std::ostringstream s;
  s << kTauDefinition << "; acceptance at position i is given positions 1..i-1 accepted; c = drafter forward time / "
    << "target forward time\n";
  if (!cases.empty() && cases.front().tree_width > 1)
    s << "trees of width " << cases.front().tree_width << " verified in one target forward each: gamma is the tree's "
      << "depth, acceptance by position is by tree level\n";
  char line[512];
  std::snprintf(line, sizeof line, "%5s %5s %6s %-32s %8s %6s %10s %11s %8s %5s\n", "gamma", "T", "tau",
                "acceptance by position", "fwd/tok", "c", "spec tok/s", "plain tok/s", "speedup", "same");
  s << line;
  for (const SpecEvalCase& c : cases) {
    std::string by_position;
    char cell[16];
    for (int i = 0; i < c.gamma; ++i) {
      std::snprintf(cell, sizeof cell, "%s%.2f", i ? " " : "", c.spec.acceptance_at(i));
      by_position += cell;
    }
    std::snprintf(line, sizeof line, "%5d %5.2g %6.3f %-32s %8.3f %6.3f %10.1f %11.1f %7.2fx %5s\n", c.gamma,
                  c.temperature, c.spec.tau(), by_position.c_str(), c.spec.target_forwards_per_token(),
                  c.spec.drafter_overhead(), c.spec.tokens_per_second(), c.plain_tokens_per_second(), c.speedup(),
                  c.same_tokens ? "yes" : "no");
    s << line;
  }
  return s.str();
}

nlohmann::json decode_speed_json(const SpeculativeStats& st, int64_t plain_tokens, double plain_seconds, double speedup,
                                 bool same_tokens) {
  return {{"verify_seconds", st.verify_seconds},
          {"prefill_seconds", st.prefill_seconds},
          {"seconds", st.total_seconds},
          {"tokens", st.tokens},
          {"tokens_per_second", st.tokens_per_second()},
          {"plain_tokens", plain_tokens},
          {"plain_seconds", plain_seconds},
          {"plain_tokens_per_second", plain_seconds > 0 ? plain_tokens / plain_seconds : 0.0},
          {"speedup", speedup},
          {"same_tokens_as_plain", same_tokens}};
}

nlohmann::json spec_eval_json(const std::vector<SpecEvalCase>& cases) {
  nlohmann::json out = nlohmann::json::array();
  for (const SpecEvalCase& c : cases) {
    const SpeculativeStats& st = c.spec;
    std::vector<double> by_position;
    for (int i = 0; i < c.gamma; ++i) by_position.push_back(st.acceptance_at(i));
    out.push_back({{"gamma", c.gamma},
                   {"tree_width", c.tree_width},
                   {"tree_nodes", draft_tree_nodes(c.tree_width, c.gamma)},
                   {"temperature", c.temperature},
                   {"tau", st.tau()},
                   {"tau_definition", kTauDefinition},
                   {"expected_tau_from_acceptance", expected_tokens_per_call(st.acceptance_rate(), c.gamma)},
                   {"acceptance_rate", st.acceptance_rate()},
                   {"acceptance_by_position", by_position},
                   {"target_forwards_per_token", st.target_forwards_per_token()},
                   {"target_calls", st.target_calls},
                   {"drafter_forwards", st.drafter_calls},
                   {"drafter_overhead_c", st.drafter_overhead()},
                   {"draft_seconds", st.draft_seconds},
                   {"target_seconds", st.target_seconds}});
    out.back().update(decode_speed_json(st, c.plain_tokens, c.plain_seconds, c.speedup(), c.same_tokens));
  }
  return out;
}

}  // namespace anvil
