// Medusa's candidate trees (see the header): validation and buffers, loading by name / literal /
// file, and the calibrated builder.
#include "eval/medusa_tree.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "eval/medusa_choices.h"

namespace anvil {

namespace {

// Medusa's node order: by depth, then lexicographically.
bool medusa_order(const std::vector<int>& a, const std::vector<int>& b) {
  return a.size() != b.size() ? a.size() < b.size() : a < b;
}

std::string path_text(const std::vector<int>& p) {
  const std::string list = format_medusa_paths({p});  // "[(…)]"
  return list.substr(1, list.size() - 2);
}

std::string default_names() {
  std::string names;
  for (const MedusaDefaultTree& t : medusa_default_trees()) names += (names.empty() ? "" : ", ") + std::string(t.name);
  return names;
}

}  // namespace

MedusaTree MedusaTree::from_paths(std::vector<std::vector<int>> paths, int num_heads, const std::string& where,
                                  int topk) {
  ANVIL_CHECK(num_heads >= 1 && topk >= 1, where, ": a Medusa tree needs >= 1 head and top-k >= 1, got ", num_heads,
              " heads and top-k ", topk);
  ANVIL_CHECK(!paths.empty(), where, ": the tree's path list is empty — give at least one path, e.g. [(0,)]");
  for (size_t i = 0; i < paths.size(); ++i) {
    const std::vector<int>& p = paths[i];
    ANVIL_CHECK(!p.empty(), where, ": path ", i, " is empty — the root is implicit; every path names >= 1 rank");
    ANVIL_CHECK(static_cast<int64_t>(p.size()) <= num_heads, where, ": path ", i, " ", path_text(p),
                " uses head ", p.size(), " but the model has ", num_heads,
                " Medusa heads — drop the paths deeper than ", num_heads, " or train more heads");
    for (int c : p)
      ANVIL_CHECK(c >= 0 && c < topk, where, ": path ", i, " ", path_text(p), " has rank ", c, ", outside [0, ", topk,
                  ") — ranks count from 0 (0 = the head's most likely token)");
  }
  std::sort(paths.begin(), paths.end(), medusa_order);
  std::map<std::vector<int>, int32_t> index;  // path -> node
  for (size_t i = 0; i < paths.size(); ++i) {
    ANVIL_CHECK(index.emplace(paths[i], static_cast<int32_t>(i + 1)).second, where, ": path ",
                path_text(paths[i]), " is listed twice — list each node once");
  }
  MedusaTree t;
  std::vector<int32_t> parent = {-1};
  t.paths = {{}};
  t.head = {-1};
  t.rank = {-1};
  for (const std::vector<int>& p : paths) {
    int32_t up = 0;
    if (p.size() > 1) {
      const auto it = index.find(std::vector<int>(p.begin(), p.end() - 1));
      ANVIL_CHECK(it != index.end(), where, ": path ", path_text(p), " has no parent ",
                  path_text(std::vector<int>(p.begin(), p.end() - 1)),
                  " in the list — a tree lists every prefix of its paths");
      up = it->second;
    }
    parent.push_back(up);
    t.paths.push_back(p);
    t.head.push_back(static_cast<int32_t>(p.size()) - 1);
    t.rank.push_back(p.back());
  }
  t.tree = DraftTree::from_parents(std::move(parent), where);
  for (int32_t leaf = 1; leaf < t.tree.size(); ++leaf) {
    if (!t.tree.leaf(leaf)) continue;
    std::vector<int32_t> row;
    for (int32_t i = leaf; i >= 0; i = t.tree.parent[i]) row.push_back(i);
    std::reverse(row.begin(), row.end());
    t.retrieve.push_back(std::move(row));
  }
  return t;
}

int MedusaTree::max_rank() const { return rank.empty() ? 0 : *std::max_element(rank.begin(), rank.end()) + 1; }

std::vector<int32_t> medusa_candidates(const MedusaTree& tree, int32_t root_token, const int32_t* topk, int k) {
  ANVIL_CHECK(k >= tree.max_rank(), "medusa_candidates: the tree uses rank ", tree.max_rank() - 1,
              " but only the top-", k, " of each head were given — compute the top-", tree.max_rank());
  std::vector<int32_t> tokens(static_cast<size_t>(tree.size()), root_token);
  for (int64_t i = 1; i < tree.size(); ++i) tokens[i] = topk[tree.head[i] * k + tree.rank[i]];
  return tokens;
}

MedusaTree load_medusa_tree(const std::string& spec, int num_heads, const std::string& where) {
  for (const MedusaDefaultTree& t : medusa_default_trees())
    if (spec == t.name) return MedusaTree::from_paths(parse_medusa_choices(t.choices, where), num_heads, where);
  const size_t first = spec.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && (spec[first] == '[' || spec[first] == '('))
    return MedusaTree::from_paths(parse_medusa_choices(spec, where), num_heads, where);
  std::error_code ec;
  ANVIL_CHECK(!spec.empty() && std::filesystem::is_regular_file(spec, ec), where, ": '", spec,
              "' is not a default tree (", default_names(), "), a path list like [(0,), (1,), (0, 0)], or a file "
              "holding one");
  std::ifstream in(spec, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  ANVIL_CHECK(in.good() || in.eof(), where, ": cannot read ", spec);
  const std::string file_where = where + " (file " + spec + ")";
  return MedusaTree::from_paths(parse_medusa_choices(text.str(), file_where), num_heads, file_where);
}

std::string format_medusa_choices(const MedusaTree& tree) {
  return format_medusa_paths(std::vector<std::vector<int>>(tree.paths.begin() + 1, tree.paths.end()));
}

double expected_accept_length(const MedusaTree& tree, const std::vector<std::vector<double>>& accuracy) {
  double total = 0;
  for (size_t i = 1; i < tree.paths.size(); ++i) {
    const std::vector<int>& p = tree.paths[i];
    ANVIL_CHECK(p.size() <= accuracy.size(), "expected_accept_length: the tree uses head ", p.size(),
                " but the accuracy table has ", accuracy.size(), " heads");
    double prob = 1;
    for (size_t j = 0; j < p.size(); ++j) {
      ANVIL_CHECK(static_cast<size_t>(p[j]) < accuracy[j].size(), "expected_accept_length: the tree uses rank ", p[j],
                  " of head ", j + 1, " but the accuracy table has ", accuracy[j].size(), " ranks for it");
      prob *= accuracy[j][p[j]];
    }
    total += prob;
  }
  return total;
}

MedusaTree build_medusa_tree(const std::vector<std::vector<double>>& accuracy, int nodes) {
  const int heads = static_cast<int>(accuracy.size());
  ANVIL_CHECK(heads >= 1, "build_medusa_tree: the accuracy table is empty — measure >= 1 head");
  int64_t available = 0, level = 1;  // every node the table allows, capped to avoid overflow
  for (int j = 0; j < heads; ++j) {
    const int64_t ranks = static_cast<int64_t>(accuracy[j].size());
    ANVIL_CHECK(ranks >= 1 && ranks <= kMedusaTopK, "build_medusa_tree: head ", j + 1, " has ", ranks,
                " measured ranks — give 1 to ", kMedusaTopK);
    for (double a : accuracy[j])
      ANVIL_CHECK(a >= 0 && a <= 1, "build_medusa_tree: head ", j + 1, " has accuracy ", a,
                  " — accuracies are probabilities in [0, 1]");
    level = std::min<int64_t>(level * ranks, DraftTree::kMaxNodes + 1);
    available = std::min<int64_t>(available + level, DraftTree::kMaxNodes + 1);
  }
  ANVIL_CHECK(nodes >= 1 && nodes <= available && nodes <= DraftTree::kMaxNodes, "build_medusa_tree: ", nodes,
              " nodes asked, but ", std::min<int64_t>(available, DraftTree::kMaxNodes),
              " is the most this table (heads × ranks) and one verification allow — ask for fewer");
  // The frontier, best first: larger probability, then Medusa's order (shallower, lexicographic).
  using Candidate = std::pair<double, std::vector<int>>;
  const auto better = [](const Candidate& a, const Candidate& b) {
    return a.first != b.first ? a.first > b.first : medusa_order(a.second, b.second);
  };
  std::set<Candidate, decltype(better)> frontier(better);
  for (int c = 0; c < static_cast<int>(accuracy[0].size()); ++c) frontier.insert({accuracy[0][c], {c}});
  std::vector<std::vector<int>> chosen;
  while (static_cast<int>(chosen.size()) < nodes) {
    const Candidate best = *frontier.begin();
    frontier.erase(frontier.begin());
    chosen.push_back(best.second);
    const size_t d = best.second.size();
    if (static_cast<int>(d) == heads) continue;
    for (int c = 0; c < static_cast<int>(accuracy[d].size()); ++c) {
      std::vector<int> child = best.second;
      child.push_back(c);
      frontier.insert({best.first * accuracy[d][c], std::move(child)});
    }
  }
  return MedusaTree::from_paths(std::move(chosen), heads, "build_medusa_tree");
}

}  // namespace anvil
