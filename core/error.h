// anvil::Error and the ANVIL_CHECK macro: every user-facing failure says what went
// wrong, where, and how to fix it. Never abort() on user input.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace anvil {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

}  // namespace anvil

// ANVIL_CHECK(cond, "what went wrong", value, " — how to fix it");
#define ANVIL_CHECK(cond, ...)                                     \
  do {                                                             \
    if (!(cond)) throw ::anvil::Error(::anvil::detail::concat(__VA_ARGS__)); \
  } while (0)

#define ANVIL_FAIL(...) throw ::anvil::Error(::anvil::detail::concat(__VA_ARGS__))
