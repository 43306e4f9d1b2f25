// "Did you mean ...?": the closest valid name to a misspelt one, for error messages.
#pragma once
#include <string>
#include <vector>

namespace anvil {

// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of two
// adjacent characters each cost 1 ("stpes" -> "steps" is 1).
size_t edit_distance(const std::string& a, const std::string& b);

// The candidate closest to `word` if it is close enough to be a likely typo (a distance of at most
// about a third of the word, at least 2, or one name containing the other); "" when none is.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// "a, b or c" for messages.
std::string join_alternatives(const std::vector<std::string>& items, const std::string& last_sep = " or ");

}  // namespace anvil
