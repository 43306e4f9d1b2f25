#include "trainer/did_you_mean.h"

#include <algorithm>
#include <cctype>

namespace anvil {

size_t edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  // Three rows: the one before last is needed for transpositions.
  std::vector<size_t> prev2(m + 1), prev(m + 1), cur(m + 1);
  for (size_t j = 0; j <= m; ++j) prev[j] = j;
  for (size_t i = 1; i <= n; ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) cur[j] = std::min(cur[j], prev2[j - 2] + 1);
    }
    std::swap(prev2, prev);
    std::swap(prev, cur);
  }
  return prev[m];
}

namespace {
std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
}  // namespace

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  const std::string w = lower(word);
  std::string best;
  size_t best_score = static_cast<size_t>(-1);
  for (const std::string& candidate : candidates) {
    const std::string c = lower(candidate);
    const size_t d = edit_distance(w, c);
    const size_t limit = std::max<size_t>(2, std::min(w.size(), c.size()) / 3);
    // One containing the other ("batch_size" in "micro_batch_size") is a likely intent too.
    const std::string& shorter = w.size() < c.size() ? w : c;
    const std::string& longer = w.size() < c.size() ? c : w;
    const bool contains = shorter.size() >= 3 && longer.find(shorter) != std::string::npos;
    if (d > limit && !contains) continue;
    const size_t score = contains ? std::min(d, longer.size() - shorter.size()) : d;
    if (score < best_score) {
      best_score = score;
      best = candidate;
    }
  }
  return best;
}

std::string join_alternatives(const std::vector<std::string>& items, const std::string& last_sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += i + 1 == items.size() ? last_sep : ", ";
    out += items[i];
  }
  return out;
}

}  // namespace anvil
