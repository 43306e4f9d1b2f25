// Medusa's candidate-tree path lists ("medusa_choices", ALGORITHMS.md §6) as text: a small
// hand-written, bounds-checked parser for the Python / JSON spellings Medusa's files use, and the
// writer. Shapes only — what a list means (eval/medusa_tree.h) is validated there. No dependencies
// beyond core/error.h, so the fuzz target can link it alone.
#pragma once
#include <string>
#include <vector>

namespace anvil {

// Parses a list of paths of integers: `[(0,), (1,), (0, 0)]` (Python tuples, trailing commas,
// `(0)` taken as `(0,)`), `[[0], [1], [0, 0]]` (JSON), optionally as an assignment
// `name = [...]` (a line of Medusa's medusa_choices.py), with whitespace and `#` comments
// anywhere between tokens. Integers may be negative (the validator names them); at most 9 digits.
// A malformed text throws anvil::Error naming `where` and the character offset.
std::vector<std::vector<int>> parse_medusa_choices(const std::string& text, const std::string& where);

// `[(0,), (1,), (0, 0)]`: the Python spelling Medusa's files use; parse_medusa_choices reads it back.
std::string format_medusa_paths(const std::vector<std::vector<int>>& paths);

}  // namespace anvil
