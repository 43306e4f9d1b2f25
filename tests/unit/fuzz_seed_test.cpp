// The checked-in seed corpora of the fuzz targets (tests/fuzz; the safetensors seeds are checked by
// safetensors_malformed_test): every tokenizer.json and model.safetensors.index.json seed whose name
// starts with "valid" loads, and every other one fails with an anvil::Error naming the file.
#include <gtest/gtest.h>

#include <filesystem>

#include "data/safetensors.h"
#include "data/tokenizer.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;
namespace fs = std::filesystem;

namespace {

std::vector<fs::path> seeds(const std::string& folder) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(source_path("tests/data/" + folder))) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  EXPECT_GE(out.size(), 10u) << folder << " lost its seeds";
  return out;
}

bool expect_valid(const fs::path& p) { return p.filename().string().rfind("valid", 0) == 0; }

}  // namespace

TEST(FuzzSeeds, TokenizerJsonSeedsLoadOrFailNamingTheFile) {
  int valid = 0;
  for (const fs::path& p : seeds("tokenizer_json")) {
    const std::string msg = error_of([&] { Tokenizer::load(p.string()).encode("Hello abc"); });
    if (expect_valid(p)) {
      EXPECT_EQ(msg, "(no error)") << p;
      ++valid;
    } else {
      EXPECT_NE(msg.find(p.string()), std::string::npos) << p << ": " << msg;
    }
  }
  EXPECT_GE(valid, 3);
}

TEST(FuzzSeeds, SafetensorsIndexSeedsOpenOrFailNamingTheIndex) {
  // The shards tests/fuzz/safetensors_index_fuzzer.cpp writes next to each input.
  const std::string dir = ::testing::TempDir() + "/fuzz_seed_index";
  fs::remove_all(dir);
  fs::create_directories(dir);
  write_safetensors(dir + "/model-00001-of-00002.safetensors",
                    {{"a", Tensor::full({2}, 1.0)}, {"b", Tensor::full({3}, 2.0).to(DType::BF16)}});
  write_safetensors(dir + "/model-00002-of-00002.safetensors", {{"c", Tensor::full({4}, 3.0, DType::I32)}});
  const std::string index = dir + "/model.safetensors.index.json";
  int valid = 0;
  for (const fs::path& p : seeds("safetensors_index")) {
    fs::copy_file(p, index, fs::copy_options::overwrite_existing);
    const std::string msg = error_of([&] { SafetensorsIndex::open(dir).get_f32("c"); });
    if (expect_valid(p)) {
      EXPECT_EQ(msg, "(no error)") << p;
      ++valid;
    } else {
      EXPECT_NE(msg.find(index), std::string::npos) << p << ": " << msg;
    }
  }
  EXPECT_GE(valid, 2);
}
