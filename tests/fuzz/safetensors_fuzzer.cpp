// libFuzzer target: SafetensorsFile::open on arbitrary bytes (header length, JSON header, entries,
// offsets, tiling), then every tensor read through tensor() and get_f32(). A bad file must be an
// anvil::Error; anything else escaping (another exception, a sanitizer report) is a finding.
#include <cstdint>

#include "data/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = anvil::fuzz::scratch_dir() + "/input.safetensors";
  anvil::fuzz::write_bytes(path, data, size);
  try {
    const anvil::SafetensorsFile file = anvil::SafetensorsFile::open(path);
    for (const std::string& name : file.names()) {
      const anvil::SafetensorsInfo& info = file.info(name);
      if (!info.supported) continue;
      const anvil::Tensor view = file.tensor(name);
      if (view.numel() != info.numel()) __builtin_trap();
      try {
        (void)file.get_f32(name);
      } catch (const anvil::Error&) {  // integers beyond f32's exact range
      }
    }
  } catch (const anvil::Error&) {
  }
  return 0;
}
