// Medusa's candidate trees (eval/medusa_tree.h): the buffers against the prefix relation they
// encode (ALGORITHMS.md §6's worked tree, every published tree), the published trees against the
// depth histograms Python counted, validation errors, the parser (spellings, files, round trips,
// random and truncated input), and the calibrated builder against brute force.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>

#include "core/error.h"
#include "eval/medusa_choices.h"
#include "eval/medusa_tree.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

bool is_prefix(const std::vector<int>& a, const std::vector<int>& b) {  // a a prefix of b (or equal)
  return a.size() <= b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// Every buffer against the paths it must encode: the mask is the prefix relation, the level the
// path length, head/rank the path's last step, retrieve one row per leaf (a path no other extends).
void expect_buffers_match_paths(const MedusaTree& t, const std::string& tag) {
  const int64_t S = t.size();
  ASSERT_EQ(static_cast<int64_t>(t.paths.size()), S) << tag;
  const std::vector<uint8_t> mask = t.tree.ancestor_mask();
  int64_t leaves = 0;
  for (int64_t i = 0; i < S; ++i) {
    const std::vector<int>& p = t.paths[i];
    EXPECT_EQ(t.tree.level[i], static_cast<int>(p.size())) << tag << " node " << i;
    EXPECT_EQ(t.head[i], static_cast<int>(p.size()) - 1) << tag;
    EXPECT_EQ(t.rank[i], p.empty() ? -1 : p.back()) << tag;
    bool extended = false;
    for (int64_t j = 0; j < S; ++j) {
      EXPECT_EQ(mask[i * S + j], is_prefix(t.paths[j], p)) << tag << " mask " << i << "," << j;
      extended |= j != i && is_prefix(p, t.paths[j]);
    }
    if (i > 0 && !extended) {
      ASSERT_LT(leaves, static_cast<int64_t>(t.retrieve.size())) << tag;
      const std::vector<int32_t>& row = t.retrieve[leaves++];
      ASSERT_EQ(row.size(), p.size() + 1) << tag;
      EXPECT_EQ(row.back(), i) << tag;
      for (size_t d = 0; d < row.size(); ++d)
        EXPECT_EQ(t.paths[row[d]], std::vector<int>(p.begin(), p.begin() + d)) << tag;
    }
    if (i > 1) {  // Medusa's order: by depth, then lexicographic
      const std::vector<int>& q = t.paths[i - 1];
      EXPECT_TRUE(q.size() < p.size() || (q.size() == p.size() && q < p)) << tag << " order at " << i;
    }
  }
  EXPECT_EQ(leaves, static_cast<int64_t>(t.retrieve.size())) << tag;
}

TEST(MedusaTree, TheWorkedTreeOfAlgorithms) {
  const MedusaTree t = load_medusa_tree("[(0,), (1,), (0,0)]", 4, "test");
  ASSERT_EQ(t.size(), 4);
  const std::vector<uint8_t> mask = t.tree.ancestor_mask();
  const std::vector<std::vector<int>> rows = {{0}, {0, 1}, {0, 2}, {0, 1, 3}};
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j)
      EXPECT_EQ(mask[i * 4 + j], std::count(rows[i].begin(), rows[i].end(), j)) << i << "," << j;
  EXPECT_EQ(t.tree.level, (std::vector<int32_t>{0, 1, 1, 2}));
  EXPECT_EQ(t.retrieve.size(), 2u);
  EXPECT_EQ(t.max_rank(), 2);
  EXPECT_EQ(t.depth(), 2);
  EXPECT_EQ(t.nodes(), 3);
  expect_buffers_match_paths(t, "worked tree");
  // Candidates: head h's rank-r id is topk[h * k + r].
  const int32_t topk[] = {10, 11, 12, 20, 21, 22};  // 2 heads, top-3
  EXPECT_EQ(medusa_candidates(t, 7, topk, 3), (std::vector<int32_t>{7, 10, 11, 20}));
  EXPECT_NE(error_of([&] { medusa_candidates(t, 7, topk, 1); }).find("compute the top-2"), std::string::npos);
}

TEST(MedusaTree, PublishedTreesMatchPython) {
  ASSERT_EQ(medusa_default_trees().size(), 9u);
  for (const MedusaDefaultTree& d : medusa_default_trees()) {
    const MedusaTree t = load_medusa_tree(d.name, 5, "test");
    EXPECT_EQ(t.nodes(), 63) << d.name;  // 64 tokens per verification with the root
    std::vector<int> hist(static_cast<size_t>(t.depth()), 0);
    for (int64_t i = 1; i < t.size(); ++i) ++hist[t.tree.level[i] - 1];
    EXPECT_EQ(hist, d.depths) << d.name;
    EXPECT_EQ(t.max_rank(), 10) << d.name;
    expect_buffers_match_paths(t, d.name);
    // Round trip through the writer.
    EXPECT_EQ(load_medusa_tree(format_medusa_choices(t), 5, "round trip").paths, t.paths) << d.name;
  }
  // ALGORITHMS.md §6.
  const auto histogram = [](const char* name) {
    for (const MedusaDefaultTree& d : medusa_default_trees())
      if (std::string(d.name) == name) return d.depths;
    return std::vector<int>();
  };
  EXPECT_EQ(histogram("mc_sim_7b_63"), (std::vector<int>{10, 28, 23, 2}));
  EXPECT_EQ(histogram("vicuna_7b_stage2"), (std::vector<int>{10, 23, 23, 7}));
  const MedusaTree three = load_medusa_tree("vicuna_33b_stage1", 3, "test");  // depth 3 fits 3 heads
  EXPECT_EQ(three.depth(), 3);
  EXPECT_NE(error_of([] { load_medusa_tree("vicuna_7b_stage2", 3, "medusa.tree"); })
                .find("medusa.tree: path 18 (0, 0, 0, 0) uses head 4 but the model has 3 Medusa heads"),
            std::string::npos);
}

TEST(MedusaTree, EachInvalidListHasItsError) {
  const auto err = [](const std::string& spec, int heads = 4) {
    return error_of([&] { load_medusa_tree(spec, heads, "cfg.medusa_choices"); });
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[]", "cfg.medusa_choices: the tree's path list is empty"},
      {"[(0,), ()]", "path 1 is empty"},
      {"[(0,), (-1,)]", "has rank -1, outside [0, 10)"},
      {"[(0,), (10,)]", "has rank 10, outside [0, 10)"},
      {"[(0,), (0, 0), (0, 0, 0)]", "uses head 3 but the model has 2 Medusa heads"},
      {"[(0,), (1,), (0,)]", "path (0,) is listed twice"},
      {"[(0,), (1, 0)]", "path (1, 0) has no parent (1,) in the list"},
      {"[(0,), (1,)", "character 11: expected ']' before the end of the text (truncated?)"},
      {"[(0,) (1,)]", "character 6: expected ',' or ']' after a path, got '('"},
      {"[(0,), (x,)]", "character 8: expected an integer rank, got 'x'"},
      {"[(0,), (1234567890,)]", "an integer of at most 9 digits"},
      {"[(0,)] [(1,)]", "text after the list's closing ']'"},
      {"[(0, 1]]", "expected ',' or ')' after a rank, got ']'"},
      {"[0, 1]", "expected a path, '(' or '['"},
      {"no_such_tree", "'no_such_tree' is not a default tree (mc_sim_7b_63, vicuna_7b_stage2"},
  };
  for (const auto& [spec, want] : cases) {
    const std::string got = err(spec, spec.find("(0, 0, 0)") != std::string::npos ? 2 : 4);
    EXPECT_NE(got.find(want), std::string::npos) << spec << " gave: " << got;
  }
  EXPECT_NE(error_of([] { MedusaTree::from_paths({{0}, {3}}, 2, "t", 3); }).find("rank 3, outside [0, 3)"),
            std::string::npos);
}

TEST(MedusaTree, SpellingsAndFiles) {
  const std::vector<std::vector<int>> want = {{0}, {1}, {0, 0}, {0, 1}};
  for (const std::string spec :
       {"[(0,), (1,), (0, 0), (0, 1)]", "[[0],[1],[0,0],[0,1]]", " [(0), (1,), (0,0,), (0, 1),] ",
        "[(0, 1), (0,0), (1,), (0,)]", "[ # depth 1\n (0,), (1,),\n # depth 2\n (0, 0), (0, 1)]"})
    EXPECT_EQ(load_medusa_tree(spec, 2, "t").paths, (std::vector<std::vector<int>>{{}, {0}, {1}, {0, 0}, {0, 1}}))
        << spec;
  const std::string dir = ::testing::TempDir();
  const std::string py = dir + "/medusa_tree_test_choices.py", json = dir + "/medusa_tree_test_choices.json",
                    bad = dir + "/medusa_tree_test_bad.json";
  std::ofstream(py) << "my_tree = [(0,), (1,), (0, 0), (0, 1)]  # a comment\n";
  std::ofstream(json) << "[[0], [1], [0, 0], [0, 1]]\n";
  std::ofstream(bad) << "[[0], [1], [0, 0],\n [0 1]]\n";
  EXPECT_EQ(load_medusa_tree(py, 2, "t").paths, load_medusa_tree(json, 2, "t").paths);
  EXPECT_EQ(load_medusa_tree(json, 2, "t").nodes(), 4);
  const std::string e = error_of([&] { load_medusa_tree(bad, 2, "cfg.tree"); });
  EXPECT_NE(e.find("cfg.tree (file " + bad + "): character 23: expected ',' or ']' after a rank, got '1'"),
            std::string::npos)
      << e;
  std::remove(py.c_str());
  std::remove(json.c_str());
  std::remove(bad.c_str());
  EXPECT_EQ(format_medusa_paths(want), "[(0,), (1,), (0, 0), (0, 1)]");
}

// Random bytes, truncations and byte flips of valid lists: each parses or throws anvil::Error —
// never another exception (the sanitizers of the fuzz build catch crashes; tests/fuzz).
TEST(MedusaTree, MalformedTextIsAnError) {
  std::mt19937_64 rng(15);
  const auto survives = [](const std::string& text) {
    try {
      const auto paths = parse_medusa_choices(text, "fuzz");
      try {
        const MedusaTree t = MedusaTree::from_paths(paths, 5, "fuzz");
        return load_medusa_tree(format_medusa_choices(t), 5, "fuzz").paths == t.paths;
      } catch (const Error&) {
        return true;
      }
    } catch (const Error&) {
      return true;
    } catch (...) {
      return false;
    }
  };
  const std::string alphabet = "[](),# \n0123456789-=_ax";
  int64_t failures = 0, parsed = 0;
  for (const MedusaDefaultTree& d : medusa_default_trees()) {
    const std::string text = d.choices;
    for (size_t n = 0; n < text.size(); ++n) failures += !survives(text.substr(0, n));
    for (int k = 0; k < 300; ++k) {
      std::string m = text;
      for (int f = 0; f < 3; ++f) m[rng() % m.size()] = alphabet[rng() % alphabet.size()];
      failures += !survives(m);
      try {
        parse_medusa_choices(m, "fuzz");
        ++parsed;
      } catch (const Error&) {
      }
    }
  }
  for (int k = 0; k < 5000; ++k) {
    std::string s(rng() % 40, ' ');
    for (char& c : s) c = k % 2 ? alphabet[rng() % alphabet.size()] : static_cast<char>(rng() % 256);
    failures += !survives(s);
  }
  EXPECT_EQ(failures, 0);
  EXPECT_GT(parsed, 10);  // some mutations still parse (a digit for a digit) and go through from_paths
}

TEST(DraftTree, FromParentsIrregularAndComplete) {
  const DraftTree c = DraftTree::complete(3, 2);
  const DraftTree f = DraftTree::from_parents(c.parent, "t");
  EXPECT_EQ(f.level, c.level);
  EXPECT_EQ(f.first_child, c.first_child);
  EXPECT_EQ(f.children, c.children);
  EXPECT_EQ(c.width, 3);
  EXPECT_EQ(f.width, 0);
  const DraftTree t = DraftTree::from_parents({-1, 0, 0, 1, 1, 1, 2, 5}, "t");
  EXPECT_EQ(t.depth, 3);
  EXPECT_EQ(t.children, (std::vector<int32_t>{2, 3, 1, 0, 0, 1, 0, 0}));
  EXPECT_EQ(t.first_child, (std::vector<int32_t>{1, 3, 6, -1, -1, 7, -1, -1}));
  EXPECT_NE(error_of([] { DraftTree::from_parents({-1, 0, 1, 0}, "where"); }).find("where: node 3 has parent 0"),
            std::string::npos);
  EXPECT_NE(error_of([] { DraftTree::from_parents({-1}, "where"); }).find("1 to 4096 draft nodes, got 0"),
            std::string::npos);
  EXPECT_NE(error_of([] { DraftTree::from_parents({0, 0}, "where"); }).find("node 0 is the root"), std::string::npos);
}

// Σ over nodes of Π accuracy along the path, walking parents (not the paths the function reads).
double accept_length_by_parents(const MedusaTree& t, const std::vector<std::vector<double>>& acc) {
  double total = 0;
  for (int32_t i = 1; i < t.size(); ++i) {
    double prob = 1;
    for (int32_t j = i; j > 0; j = t.tree.parent[j]) prob *= acc[t.head[j]][t.rank[j]];
    total += prob;
  }
  return total;
}

// The best expected length over every prefix-closed tree of n nodes in the table's universe.
double best_by_brute_force(const std::vector<std::vector<double>>& acc, int n) {
  std::vector<std::vector<int>> universe;
  std::function<void(std::vector<int>)> grow = [&](std::vector<int> p) {
    if (!p.empty()) universe.push_back(p);
    if (p.size() == acc.size()) return;
    for (int c = 0; c < static_cast<int>(acc[p.size()].size()); ++c) {
      p.push_back(c);
      grow(p);
      p.pop_back();
    }
  };
  grow({});
  const int U = static_cast<int>(universe.size());
  double best = -1;
  std::vector<int> pick(static_cast<size_t>(n));
  std::function<void(int, int)> choose = [&](int at, int from) {
    if (at == n) {
      std::vector<std::vector<int>> paths;
      for (int i : pick) paths.push_back(universe[i]);
      for (const auto& p : paths)
        if (p.size() > 1 && std::find(paths.begin(), paths.end(), std::vector<int>(p.begin(), p.end() - 1)) ==
                                paths.end())
          return;  // not prefix-closed
      double total = 0;
      for (const auto& p : paths) {
        double prob = 1;
        for (size_t j = 0; j < p.size(); ++j) prob *= acc[j][p[j]];
        total += prob;
      }
      best = std::max(best, total);
      return;
    }
    for (int i = from; i < U; ++i) {
      pick[at] = i;
      choose(at + 1, i + 1);
    }
  };
  choose(0, 0);
  return best;
}

TEST(MedusaTree, CalibratedTreeIsOptimal) {
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  int64_t cases = 0;
  for (int heads : {1, 2, 3}) {
    for (int ranks : {2, 3}) {
      for (int trial = 0; trial < 4; ++trial) {
        std::vector<std::vector<double>> acc(static_cast<size_t>(heads));
        for (auto& row : acc) {
          for (int r = 0; r < ranks; ++r) row.push_back(unit(rng));
          if (trial == 3) row.assign(row.size(), 0.5);  // ties everywhere: still prefix-closed and optimal
        }
        int universe = 0, level = 1;
        for (int h = 0; h < heads; ++h) universe += (level *= ranks);
        for (int n = 1; n <= std::min(universe, 6); ++n) {
          const MedusaTree t = build_medusa_tree(acc, n);
          EXPECT_EQ(t.nodes(), n);
          const double got = expected_accept_length(t, acc);
          EXPECT_NEAR(got, accept_length_by_parents(t, acc), 1e-12);
          EXPECT_NEAR(got, best_by_brute_force(acc, n), 1e-12) << heads << " heads, " << ranks << " ranks, n " << n;
          ++cases;
        }
      }
    }
  }
  EXPECT_GT(cases, 80);
  // Deterministic: equal path probabilities go in Medusa's order (shallower, then lexicographic).
  EXPECT_EQ(format_medusa_choices(build_medusa_tree({{0.5, 0.5}, {1.0, 1.0}}, 3)), "[(0,), (1,), (0, 0)]");
  EXPECT_EQ(format_medusa_choices(build_medusa_tree({{0.6, 0.3}, {0.9, 0.2}}, 3)), "[(0,), (1,), (0, 0)]");
  EXPECT_EQ(format_medusa_choices(build_medusa_tree({{0.6, 0.3}, {0.9, 0.6}}, 3)), "[(0,), (0, 0), (0, 1)]");
  EXPECT_NE(error_of([] { build_medusa_tree({{0.5, 1.5}}, 1); }).find("accuracy 1.5"), std::string::npos);
  EXPECT_NE(error_of([] { build_medusa_tree({{0.5, 0.4}}, 3); }).find("3 nodes asked, but 2 is the most"),
            std::string::npos);
  EXPECT_NE(error_of([] { expected_accept_length(load_medusa_tree("[(0,), (0, 0)]", 2, "t"), {{0.5}}); })
                .find("uses head 2 but the accuracy table has 1 heads"),
            std::string::npos);
}

}  // namespace
