// Helpers for the data/ tests: a per-test temporary directory and small stores.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/token_store.h"

namespace anvil::testing_data {

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "_" + info->name();
    for (char& c : name)
      if (c == '/') c = '_';
    dir_ = std::filesystem::temp_directory_path() / ("anvil_data_" + std::to_string(::getpid()) + "_" + name);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

 private:
  std::filesystem::path dir_;
};

inline void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary);
  out << content;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Writes `docs` (and `masks` when non-empty, one per doc) with the real writer.
inline void write_store(const std::string& path, const std::vector<std::vector<int32_t>>& docs,
                        const std::vector<std::vector<uint8_t>>& masks = {}, int64_t vocab_size = 1000,
                        const std::string& hash = "toy-hash", int32_t eos_id = 0) {
  TokenStoreWriter w(path, TokenStoreInfo{hash, vocab_size, eos_id, "test"});
  for (size_t d = 0; d < docs.size(); ++d) w.add_document(docs[d], masks.empty() ? nullptr : &masks[d]);
  w.finish();
}

// Toy encoder: one id per byte.
inline std::vector<int32_t> byte_encode(const std::string& text) {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

}  // namespace anvil::testing_data
