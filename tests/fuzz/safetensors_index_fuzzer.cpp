// libFuzzer target: SafetensorsIndex::open on an arbitrary model.safetensors.index.json next to two
// valid shards (model-00001-of-00002.safetensors: a, b; model-00002-of-00002.safetensors: c), then
// every tensor it resolves read back. A bad index must be an anvil::Error naming it.
#include <cstdint>
#include <filesystem>

#include "data/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
const std::string& checkpoint_dir() {
  static const std::string dir = [] {
    const std::string d = anvil::fuzz::scratch_dir() + "/ckpt";
    std::filesystem::create_directories(d);
    using anvil::Tensor;
    anvil::write_safetensors(d + "/model-00001-of-00002.safetensors",
                             {{"a", Tensor::full({2}, 1.0)}, {"b", Tensor::full({3}, 2.0).to(anvil::DType::BF16)}});
    anvil::write_safetensors(d + "/model-00002-of-00002.safetensors",
                             {{"c", Tensor::full({4}, 3.0, anvil::DType::I32)}});
    return d;
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = checkpoint_dir();
  anvil::fuzz::write_bytes(dir + "/model.safetensors.index.json", data, size);
  try {
    const anvil::SafetensorsIndex index = anvil::SafetensorsIndex::open(dir);
    for (const std::string& name : index.names()) {
      if (!index.contains(name)) __builtin_trap();
      (void)index.get_f32(name);
    }
  } catch (const anvil::Error&) {
  }
  return 0;
}
