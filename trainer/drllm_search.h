// Dr.LLM's supervision (models/drllm_router.h): for each training sequence, a bounded search
// over the per-layer actions of the routed layers (0 skip, 1 execute, 2 repeat) for a path that
// keeps the sequence's LM loss while running fewer block passes. The paper searches with a
// length-aware MCTS; this is a deterministic greedy coordinate search with the same goal:
//
//   path p in {0,1,2}^n over the n routed layers (others execute); passes(p) = sum_j p_j.
//   Evaluation 1: all-execute, loss L0; the bound is tau = L0 * (1 + tolerance).
//   The current path `best` starts all-execute and is always acceptable: loss <= tau and
//   passes <= n (never more compute than the backbone). Rounds of moves on `best`, each one
//   forward evaluation:
//     - skip moves, routed layers from the last to the first: p_j -> 0 (from execute or
//       repeat); accepted iff loss <= tau;
//     - repeat moves, routed layers from the last to the first: execute -> repeat, only while
//       passes(best) < n (it spends compute the skips saved); accepted iff loss < loss(best).
//   The search ends after `budget` evaluations (the all-execute one included) or after a
//   round that accepted nothing. The label is `best`: never worse than all-execute beyond the
//   tolerance, never more passes.
//
// Rows search independently; each evaluation scores every still-searching row at once (one
// batched forward with each row's own candidate path).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace anvil {

struct DrLLMSearchOptions {
  int64_t budget = 32;       // forward evaluations per sequence (router.search_budget), >= 1
  double tolerance = 0.01;   // relative loss increase accepted (the 1% quality bar)
};

struct DrLLMSearchResult {
  std::vector<std::vector<int32_t>> paths;  // per row: the action of each routed layer
  std::vector<double> losses;               // per row: the path's loss
  std::vector<double> base_losses;          // per row: the all-execute loss L0
  std::vector<int64_t> evaluations;         // per row: forward evaluations spent
};

// Scores candidate paths: rows[i] (a row of the batch searched) under paths[i]; returns each one's loss.
using DrLLMPathEvaluator =
    std::function<std::vector<double>(const std::vector<int64_t>& rows, const std::vector<std::vector<int32_t>>& paths)>;

// The search over `rows` sequences with n_layers routed layers (n_layers >= 1).
DrLLMSearchResult search_drllm_paths(int64_t rows, int64_t n_layers, const DrLLMPathEvaluator& evaluate,
                                     const DrLLMSearchOptions& options);

}  // namespace anvil
