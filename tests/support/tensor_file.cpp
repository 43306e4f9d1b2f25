#include "tests/support/tensor_file.h"

#include <cstdint>
#include <fstream>
#include <vector>

namespace anvil::testing {

namespace {
template <class T>
void put(std::ofstream& out, T v) { out.write(reinterpret_cast<const char*>(&v), sizeof(T)); }

template <class T>
T get(std::ifstream& in, const std::string& path) {
  T v{};
  in.read(reinterpret_cast<char*>(&v), sizeof(T));
  ANVIL_CHECK(in.good(), "tensor file ", path, " is truncated");
  return v;
}
}  // namespace

void write_tensor_file(const std::string& path, const TensorMap& tensors) {
  std::ofstream out(path, std::ios::binary);
  ANVIL_CHECK(out.good(), "cannot write tensor file ", path);
  out.write("ANVT", 4);
  put<uint32_t>(out, static_cast<uint32_t>(tensors.size()));
  for (const auto& [name, t] : tensors) {
    ANVIL_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::I32, "tensor file: ", name, " is ",
                t.describe(), "; only f32 and i32 are supported");
    const Tensor c = t.contiguous();
    put<uint32_t>(out, static_cast<uint32_t>(name.size()));
    out.write(name.data(), static_cast<std::streamsize>(name.size()));
    put<uint32_t>(out, t.dtype() == DType::F32 ? 0u : 1u);
    put<uint32_t>(out, static_cast<uint32_t>(c.dim()));
    for (int d = 0; d < c.dim(); ++d) put<int64_t>(out, c.size(d));
    out.write(static_cast<const char*>(c.raw_data()), static_cast<std::streamsize>(c.nbytes()));
  }
  ANVIL_CHECK(out.good(), "write to tensor file ", path, " failed");
}

TensorMap read_tensor_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  ANVIL_CHECK(in.good(), "cannot open tensor file ", path);
  const int64_t file_size = in.tellg();
  in.seekg(0);
  char magic[4];
  in.read(magic, 4);
  ANVIL_CHECK(in.good() && std::string(magic, 4) == "ANVT", "tensor file ", path, " has no ANVT magic");
  const uint32_t count = get<uint32_t>(in, path);
  TensorMap result;
  for (uint32_t i = 0; i < count; ++i) {
    const uint32_t name_len = get<uint32_t>(in, path);
    ANVIL_CHECK(name_len < 4096, "tensor file ", path, ": name length ", name_len, " is implausible");
    std::string name(name_len, '\0');
    in.read(name.data(), name_len);
    const uint32_t dtype = get<uint32_t>(in, path);
    ANVIL_CHECK(dtype <= 1, "tensor file ", path, ": tensor ", name, " has unknown dtype code ", dtype);
    const uint32_t ndim = get<uint32_t>(in, path);
    ANVIL_CHECK(ndim <= 8, "tensor file ", path, ": tensor ", name, " has ", ndim, " dims");
    Shape shape(ndim);
    int64_t numel = 1;
    for (auto& s : shape) {
      s = get<int64_t>(in, path);
      ANVIL_CHECK(s >= 0 && s < (int64_t{1} << 31), "tensor file ", path, ": bad dim in ", name);
      numel *= s;
    }
    const int64_t remaining = file_size - static_cast<int64_t>(in.tellg());
    ANVIL_CHECK(numel * 4 <= remaining, "tensor file ", path, ": tensor ", name, " runs past the end");
    Tensor t = Tensor::empty(shape, dtype == 0 ? DType::F32 : DType::I32);
    in.read(static_cast<char*>(t.raw_data()), numel * 4);
    result[name] = t;
  }
  return result;
}

}  // namespace anvil::testing
