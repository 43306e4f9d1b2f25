// libFuzzer target: Tokenizer::from_json on arbitrary text. A bad file must be an anvil::Error; a
// file that loads must encode and decode a fixed text without crashing (a missing byte symbol is an
// anvil::Error) and survive to_json -> from_json unchanged (equal hashes).
#include <cstdint>
#include <string>

#include "core/error.h"
#include "data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const anvil::Tokenizer tok = anvil::Tokenizer::from_json(text, "fuzz input");
    if (anvil::Tokenizer::from_json(tok.to_json(), "fuzz round trip").hash() != tok.hash()) __builtin_trap();
    try {
      const std::vector<int32_t> ids = tok.encode("Hello, world! <|endoftext|> caf\xC3\xA9 \xF0\x9F\x98\x80 12345\n\n");
      (void)tok.decode(ids);
    } catch (const anvil::Error&) {
    }
  } catch (const anvil::Error&) {
  }
  return 0;
}
