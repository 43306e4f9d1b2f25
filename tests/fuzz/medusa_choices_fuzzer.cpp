// libFuzzer target: parse_medusa_choices on arbitrary text. A bad text must be an anvil::Error; a
// list that parses must survive format_medusa_paths -> parse_medusa_choices unchanged.
#include <cstdint>
#include <string>

#include "core/error.h"
#include "eval/medusa_choices.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto paths = anvil::parse_medusa_choices(text, "fuzz input");
    if (anvil::parse_medusa_choices(anvil::format_medusa_paths(paths), "fuzz round trip") != paths) __builtin_trap();
  } catch (const anvil::Error&) {
  }
  return 0;
}
