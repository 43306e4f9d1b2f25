// Medusa path lists as text (see the header): a recursive-descent parser over a fixed two-level
// grammar (a list of paths of integers), every read bounds-checked against the text's end.
#include "eval/medusa_choices.h"

#include <cctype>
#include <sstream>

#include "core/error.h"

namespace anvil {

namespace {

class ChoicesParser {
 public:
  ChoicesParser(const std::string& text, const std::string& where) : s_(text), where_(where) {}

  std::vector<std::vector<int>> parse() {
    skip();
    if (at_identifier_start()) {  // `name = [...]`
      while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_')) ++pos_;
      skip();
      expect('=', "'=' after the name (a line like `mc_sim_7b_63 = [...]`)");
    }
    expect('[', "'[' opening the list of paths");
    std::vector<std::vector<int>> paths;
    while (!peek(']')) {
      paths.push_back(path());
      if (!peek(']')) expect(',', "',' or ']' after a path");
    }
    ++pos_;
    skip();
    if (pos_ < s_.size()) fail("text after the list's closing ']' (one list per text)");
    return paths;
  }

 private:
  std::vector<int> path() {
    const char open = s_[pos_];  // peek() left a character here
    if (open != '(' && open != '[') fail("a path, '(' or '[' (e.g. `(0, 1)` or `[0, 1]`)");
    const char close = open == '(' ? ')' : ']';
    ++pos_;
    std::vector<int> p;
    while (!peek(close)) {
      p.push_back(integer());
      if (!peek(close)) expect(',', std::string("',' or '") + close + "' after a rank");
    }
    ++pos_;
    return p;
  }

  int integer() {
    const bool negative = s_[pos_] == '-';
    if (negative) ++pos_;
    const size_t begin = pos_;
    long value = 0;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
      if (pos_ - begin == 9) fail("an integer of at most 9 digits");
      value = value * 10 + (s_[pos_] - '0');
      ++pos_;
    }
    if (pos_ == begin) fail("an integer rank");
    return static_cast<int>(negative ? -value : value);
  }

  // Skips whitespace and comments, then whether the next character is c (not consumed); the end
  // of the text is an error here (every caller still needs a closing bracket).
  bool peek(char c) {
    skip();
    if (pos_ >= s_.size()) fail(std::string("'") + c + "' before the end of the text (truncated?)");
    return s_[pos_] == c;
  }

  void expect(char c, const std::string& what) {
    skip();
    if (pos_ >= s_.size() || s_[pos_] != c) fail(what);
    ++pos_;
  }

  void skip() {
    while (pos_ < s_.size()) {
      if (std::isspace(static_cast<unsigned char>(s_[pos_]))) {
        ++pos_;
      } else if (s_[pos_] == '#') {
        while (pos_ < s_.size() && s_[pos_] != '\n') ++pos_;
      } else {
        break;
      }
    }
  }

  bool at_identifier_start() const {
    return pos_ < s_.size() && (std::isalpha(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_');
  }

  [[noreturn]] void fail(const std::string& wanted) const {
    std::string got = "the end of the text";
    if (pos_ < s_.size()) {
      const unsigned char c = static_cast<unsigned char>(s_[pos_]);
      std::ostringstream o;
      if (std::isprint(c)) o << "'" << s_[pos_] << "'";
      else o << "byte 0x" << std::hex << int(c);
      got = o.str();
    }
    ANVIL_FAIL(where_, ": character ", pos_, ": expected ", wanted, ", got ", got,
               " — write the tree as a list of paths, e.g. [(0,), (1,), (0, 0)] or [[0], [1], [0, 0]]");
  }

  const std::string& s_;
  const std::string& where_;
  size_t pos_ = 0;
};

}  // namespace

std::vector<std::vector<int>> parse_medusa_choices(const std::string& text, const std::string& where) {
  return ChoicesParser(text, where).parse();
}

std::string format_medusa_paths(const std::vector<std::vector<int>>& paths) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < paths.size(); ++i) {
    o << (i ? ", (" : "(");
    for (size_t j = 0; j < paths[i].size(); ++j) o << (j ? ", " : "") << paths[i][j];
    o << (paths[i].size() == 1 ? ",)" : ")");
  }
  o << "]";
  return o.str();
}

}  // namespace anvil
