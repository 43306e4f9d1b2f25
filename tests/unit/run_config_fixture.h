// What the run-config tests share (run_config_test.cpp, run_config_fields_test.cpp): EXPECT_HAS,
// the smallest valid config and the RunConfigTest fixture, which writes configs into a fresh directory.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/support/reference.h"
#include "trainer/config.h"

namespace anvil::testing {

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}
#define EXPECT_HAS(msg, part) EXPECT_TRUE(contains(msg, part)) << "expected \"" << (part) << "\" in:\n" << (msg)

// The smallest valid config: the three required fields and a small model.
inline const char* const kMinimal = R"(data:
  train: data/kjv.h5
tokenizer:
  path: data/tokenizer.json
training:
  steps: 100
model:
  hidden_size: 64
  num_hidden_layers: 2
  num_attention_heads: 4
  intermediate_size: 128
  max_position_embeddings: 128
)";

class RunConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(::testing::TempDir()) / (std::string("anvil_run_config_") + info->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_ / "data");
    write("data/kjv.h5", "not really hdf5; only its existence is checked");
    write("data/tokenizer.json", "{}");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const std::filesystem::path path = dir_ / name;
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path) << text;
    return path.string();
  }
  std::string abs(const std::string& name) const { return (dir_ / name).lexically_normal().string(); }
  RunConfig load(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
    return load_run_config(write("config.yaml", yaml), overrides);
  }
  std::string error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
    return error_of([&] { load(yaml, overrides); });
  }

  std::filesystem::path dir_;
};

}  // namespace anvil::testing
