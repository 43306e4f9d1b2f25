// glob_match (core/glob.h): backtracking over the last `*` only, which is enough for
// whole-name matching and keeps the match linear-ish (no recursion).
#include "core/glob.h"

namespace anvil {
namespace {

// Matches one pattern element at pattern[p] ('?', a class or a literal, possibly escaped)
// against c. Returns the index after the element, or std::string::npos on a mismatch.
size_t match_one(const std::string& pattern, size_t p, char c) {
  const char head = pattern[p];
  if (head == '?') return p + 1;
  if (head == '\\' && p + 1 < pattern.size()) return pattern[p + 1] == c ? p + 2 : std::string::npos;
  if (head == '[') {
    size_t q = p + 1;
    const bool negate = q < pattern.size() && (pattern[q] == '!' || pattern[q] == '^');
    if (negate) ++q;
    const size_t first = q;
    bool found = false;
    while (q < pattern.size() && (pattern[q] != ']' || q == first)) {
      if (q + 2 < pattern.size() && pattern[q + 1] == '-' && pattern[q + 2] != ']') {
        if (pattern[q] <= c && c <= pattern[q + 2]) found = true;
        q += 3;
      } else {
        if (pattern[q] == c) found = true;
        ++q;
      }
    }
    if (q < pattern.size()) return found != negate ? q + 1 : std::string::npos;
    // No closing ']': the '[' is a literal character.
  }
  return head == c ? p + 1 : std::string::npos;
}

}  // namespace

bool glob_match(const std::string& pattern, const std::string& name) {
  // On a mismatch the most recent '*' absorbs one more character and matching resumes after it.
  size_t p = 0, n = 0, star = std::string::npos, star_n = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_n = n;
      continue;
    }
    const size_t next = p < pattern.size() ? match_one(pattern, p, name[n]) : std::string::npos;
    if (next != std::string::npos) {
      p = next;
      ++n;
    } else if (star != std::string::npos) {
      p = star + 1;
      n = ++star_n;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace anvil
