// libFuzzer target: parse_drllm_labels (trainer/drllm_labels.h) on arbitrary bytes. A bad file must
// be an anvil::Error; a file that parses must survive re-serialisation -> parse unchanged.
#include <cstdint>
#include <string>

#include "core/error.h"
#include "trainer/drllm_labels.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const anvil::DrLLMLabelFile file = anvil::parse_drllm_labels(bytes, "fuzz input");
    std::string again = anvil::drllm_labels_header(file.settings);
    for (const auto& [key, path] : file.paths) again += anvil::drllm_labels_record(key, path);
    const anvil::DrLLMLabelFile round = anvil::parse_drllm_labels(again, "fuzz round trip");
    if (!(round.settings == file.settings) || round.paths != file.paths) __builtin_trap();
  } catch (const anvil::Error&) {
  }
  return 0;
}
