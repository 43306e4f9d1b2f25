// Shared by the fuzz targets: a private scratch directory, removed at exit.
#pragma once
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace anvil::fuzz {

// Never destroyed (the exit handler that removes the directory runs after static destructors).
inline const std::string& scratch_dir() {
  static const std::string* dir = [] {
    auto* path = new std::string((std::filesystem::temp_directory_path() / "anvil_fuzz_XXXXXX").string());
    if (!mkdtemp(path->data())) std::abort();
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return path;
  }();
  return *dir;
}

inline void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out.good()) std::abort();
}

}  // namespace anvil::fuzz
