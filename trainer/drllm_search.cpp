#include "trainer/drllm_search.h"

#include <map>

#include "core/error.h"

namespace anvil {

namespace {
int64_t passes(const std::vector<int32_t>& path) {
  int64_t n = 0;
  for (int32_t a : path) n += a;
  return n;
}

// One row's search state: the moves of a round are numbered 0 .. 2n - 1 (skip moves on layers
// n-1 .. 0, then repeat moves on layers n-1 .. 0). It ends: a skip never comes back (repeat moves
// start from execute), and between skips each repeat move lowers the loss on a finite set.
struct RowSearch {
  std::vector<int32_t> best, candidate;
  double best_loss = 0, tau = 0, base_loss = 0;
  int64_t evaluations = 0, move = 0, moves_tried_in_round = 0;
  bool accepted_in_round = false, candidate_lowers = false, done = false;
  std::map<std::vector<int32_t>, double> seen;  // every path scored, with its loss

  // The next applicable move's candidate into `candidate`; false when the search is over.
  bool next(int64_t n) {
    if (done) return false;
    int64_t scanned = 0;
    while (true) {
      if (move == 2 * n) {  // end of a round
        if (!accepted_in_round && moves_tried_in_round > 0) return done = true, false;
        move = 0;
        accepted_in_round = false;
        moves_tried_in_round = 0;
      }
      if (scanned++ > 2 * n) return done = true, false;  // a whole round where no move applies
      const int64_t m = move++;
      const bool lower = m < n;
      const int64_t j = n - 1 - (lower ? m : m - n);
      candidate = best;
      if (lower && best[j] > 0) {
        candidate[j] = 0;
      } else if (!lower && best[j] == 1 && passes(best) < n) {
        candidate[j] = 2;
      } else {
        continue;
      }
      candidate_lowers = lower;
      ++moves_tried_in_round;
      scanned = 0;
      const auto known = seen.find(candidate);
      if (known == seen.end()) return true;
      decide(known->second);  // a path scored before costs no second evaluation
    }
  }

  void report(double loss) {
    ++evaluations;
    seen[candidate] = loss;
    decide(loss);
  }

  void decide(double loss) {
    const bool accept = candidate_lowers ? loss <= tau : loss < best_loss;
    if (!accept) return;
    best = candidate;
    best_loss = loss;
    accepted_in_round = true;
  }
};
}  // namespace

DrLLMSearchResult search_drllm_paths(int64_t rows, int64_t n_layers, const DrLLMPathEvaluator& evaluate,
                                     const DrLLMSearchOptions& options) {
  ANVIL_CHECK(n_layers >= 1, "Dr.LLM label search: no routed layers — set router.layers (or router.n >= 1)");
  ANVIL_CHECK(options.budget >= 1, "Dr.LLM label search: router.search_budget must be >= 1, got ", options.budget);
  ANVIL_CHECK(options.tolerance >= 0, "Dr.LLM label search: the loss tolerance must be >= 0, got ", options.tolerance);
  std::vector<RowSearch> state(static_cast<size_t>(rows));
  auto score = [&](const std::vector<int64_t>& which, const std::vector<std::vector<int32_t>>& paths) {
    const std::vector<double> losses = evaluate(which, paths);
    ANVIL_CHECK(losses.size() == which.size(), "Dr.LLM label search: the evaluator returned ", losses.size(),
                " losses for ", which.size(), " paths");
    return losses;
  };
  // Evaluation 1: all-execute.
  std::vector<int64_t> all(static_cast<size_t>(rows));
  std::vector<std::vector<int32_t>> base(static_cast<size_t>(rows), std::vector<int32_t>(n_layers, 1));
  for (int64_t r = 0; r < rows; ++r) all[r] = r;
  if (rows > 0) {
    const std::vector<double> l0 = score(all, base);
    for (int64_t r = 0; r < rows; ++r) {
      RowSearch& s = state[r];
      s.best = base[r];
      s.best_loss = s.base_loss = l0[r];
      s.tau = l0[r] * (1.0 + options.tolerance);
      s.evaluations = 1;
      s.seen[base[r]] = l0[r];
    }
  }
  while (true) {
    std::vector<int64_t> which;
    std::vector<std::vector<int32_t>> paths;
    for (int64_t r = 0; r < rows; ++r) {
      RowSearch& s = state[r];
      if (s.evaluations >= options.budget || !s.next(n_layers)) continue;
      which.push_back(r);
      paths.push_back(s.candidate);
    }
    if (which.empty()) break;
    const std::vector<double> losses = score(which, paths);
    for (size_t i = 0; i < which.size(); ++i) state[which[i]].report(losses[i]);
  }
  DrLLMSearchResult out;
  for (const RowSearch& s : state) {
    out.paths.push_back(s.best);
    out.losses.push_back(s.best_loss);
    out.base_losses.push_back(s.base_loss);
    out.evaluations.push_back(s.evaluations);
  }
  return out;
}

}  // namespace anvil
