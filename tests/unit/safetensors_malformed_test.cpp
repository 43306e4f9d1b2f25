// data/safetensors: every malformed file and index is an anvil::Error naming the file,
// the tensor and the fix, never a crash. The single-file cases double as the libFuzzer
// seed corpus checked in under tests/data/safetensors/ (regenerate it with
// ANVIL_REGENERATE_SEEDS=1 ./safetensors_malformed_test --gtest_filter='SeedCorpus.*').
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/rng.h"
#include "data/safetensors.h"
#include "tests/support/data_fixtures.h"
#include "tests/support/reference.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing_data::read_bytes;
using anvil::testing_data::TempDir;
using anvil::testing_data::write_file;
namespace fs = std::filesystem;

namespace {

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file whose header is `header` verbatim, followed by `data_bytes` bytes of data.
std::string file_with(const std::string& header, size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\x01');
}

struct MalformedCase {
  const char* name;                    // also the seed file's stem
  std::string bytes;
  std::vector<std::string> expected;   // substrings of the message besides the path
};

std::vector<MalformedCase> malformed_cases() {
  const std::string w = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  return {
      {"truncated_length", std::string("\x05\x00\x00", 3), {"truncated", "shorter than the 8-byte header length"}},
      {"empty_file", "", {"truncated", "the file is 0 bytes"}},
      {"truncated_data", le64(w.size()) + w + std::string(5, '\0'),
       {"tensor 'w'", "run past the end of the data region (5 bytes)", "truncated"}},
      {"header_beyond_file", le64(100) + "{}", {"truncated: the header length is 100", "only 2 follow"}},
      {"huge_header_length", le64(uint64_t(1) << 40) + "{}", {"header length 1099511627776", "100 MB"}},
      {"header_length_one", le64(1) + "{", {"header length 1", "too small"}},
      {"header_not_json", file_with("{\"w\": nope}", 0), {"header is not valid UTF-8 JSON", "parse error"}},
      {"header_not_object", file_with("[1, 2]", 0), {"header is a JSON array, not an object"}},
      {"entry_not_object", file_with(R"({"w": 5})", 0), {"tensor 'w'", "not an object"}},
      {"entry_missing_offsets", file_with(R"({"w":{"dtype":"F32","shape":[2]}})", 8),
       {"tensor 'w'", "lacks 'data_offsets'"}},
      {"bad_dtype", file_with(R"({"w":{"dtype":"F99","shape":[2],"data_offsets":[0,8]}})", 8),
       {"tensor 'w'", "unknown dtype 'F99'", "BF16"}},
      {"dtype_not_string", file_with(R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8),
       {"tensor 'w'", "dtype is 4, not a string"}},
      {"shape_size_mismatch", file_with(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 20),
       {"tensor 'w'", "needs 24 bytes", "span 20"}},
      {"shape_negative", file_with(R"({"w":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,8]}})", 8),
       {"tensor 'w'", "negative size"}},
      {"shape_non_integer", file_with(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}})", 8),
       {"tensor 'w'", "holds 1.5, not an integer"}},
      {"shape_string", file_with(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8),
       {"tensor 'w'", "not an integer"}},
      {"shape_not_array", file_with(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8),
       {"tensor 'w'", "shape is 2, not an array"}},
      {"shape_overflow",
       file_with(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", 8),
       {"tensor 'w'", "more than 2^64"}},
      {"offsets_past_end", file_with(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
       {"tensor 'w'", "run past the end of the data region (8 bytes)"}},
      {"offsets_huge", file_with(R"({"w":{"dtype":"U8","shape":[8],"data_offsets":[18446744073709551600,18446744073709551608]}})", 8),
       {"tensor 'w'", "run past the end"}},
      {"offsets_negative", file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
       {"tensor 'w'", "holds -8, not a non-negative integer"}},
      {"offsets_three", file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", 8),
       {"tensor 'w'", "not [begin, end]"}},
      {"offsets_begin_after_end", file_with(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8),
       {"tensor 'w'", "begin > end"}},
      {"offsets_overlap",
       file_with(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       {"tensor 'b'", "overlap tensor 'a'"}},
      {"offsets_gap",
       file_with(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12),
       {"tensor 'b'", "bytes [4, 8)", "no gaps"}},
      {"trailing_bytes", file_with(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 12),
       {"data region is 12 bytes but the tensors end at 8"}},
      {"duplicate_name",
       file_with(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
       {"tensor 'w'", "appears twice"}},
      {"name_not_utf8", file_with("{\"w\xff\xfe\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1),
       {"not valid UTF-8 JSON", "ill-formed UTF-8", "\\xff"}},
      {"name_lone_surrogate", file_with(R"({"w\ud800":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1),
       {"not valid UTF-8 JSON", "surrogate"}},
      {"metadata_not_strings", file_with(R"({"__metadata__":{"format":"pt","epoch":3}})", 0),
       {"__metadata__ entry 'epoch' is a JSON number, not a string"}},
      {"metadata_not_object", file_with(R"({"__metadata__":["pt"]})", 0),
       {"__metadata__ is a JSON array"}},
  };
}

class Malformed : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(Malformed, IsAnErrorNamingFileTensorAndFix) {
  TempDir dir;
  const std::string path = dir.file(std::string(GetParam().name) + ".safetensors");
  write_file(path, GetParam().bytes);
  const std::string msg = error_of([&] { SafetensorsFile::open(path); });
  EXPECT_NE(msg.find("'" + path + "'"), std::string::npos) << msg;
  for (const std::string& part : GetParam().expected) EXPECT_NE(msg.find(part), std::string::npos) << part << "\n" << msg;
  EXPECT_NE(msg.find(" — "), std::string::npos) << "no fix offered: " << msg;
}

INSTANTIATE_TEST_SUITE_P(SafetensorsFile, Malformed, ::testing::ValuesIn(malformed_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

std::string seed_dir() { return anvil::testing::source_path("tests/data/safetensors"); }

// The checked-in corpus is exactly the cases above plus one valid file.
TEST(SeedCorpus, MatchesTheCases) {
  std::vector<std::pair<std::string, std::string>> files;
  for (const MalformedCase& c : malformed_cases()) files.emplace_back(std::string(c.name) + ".safetensors", c.bytes);
  files.emplace_back("valid_small.safetensors",
                     encode_safetensors({{"b", Tensor::from_vector(std::vector<float>{1.5f, -2.0f}, {2}).to(DType::BF16)},
                                         {"w", Tensor::from_vector(std::vector<float>{1.0f, 2.0f, 3.0f}, {3})}},
                                        {{"format", "pt"}}));
  const bool regenerate = std::getenv("ANVIL_REGENERATE_SEEDS") != nullptr;
  if (regenerate) fs::create_directories(seed_dir());
  for (const auto& [name, bytes] : files) {
    const std::string path = seed_dir() + "/" + name;
    if (regenerate) write_file(path, bytes);
    EXPECT_EQ(read_bytes(path), bytes) << path << " is stale: regenerate the corpus (see this file's header)";
  }
  size_t on_disk = 0;
  for (const auto& e : fs::directory_iterator(seed_dir())) on_disk += e.path().extension() == ".safetensors";
  EXPECT_EQ(on_disk, files.size()) << "unexpected files in " << seed_dir();
}

// Whatever a fuzzer adds later: a malformed seed is an anvil::Error, a valid one reads.
TEST(SeedCorpus, EverySeedOpensOrFailsCleanly) {
  int malformed = 0, valid = 0;
  for (const auto& e : fs::directory_iterator(seed_dir())) {
    const std::string path = e.path().string();
    const bool expect_valid = e.path().filename().string().rfind("valid", 0) == 0;
    const std::string msg = error_of([&] {
      SafetensorsFile f = SafetensorsFile::open(path);
      for (const std::string& name : f.names()) f.get_f32(name);
    });
    if (expect_valid) EXPECT_EQ(msg, "(no error)") << path;
    else EXPECT_NE(msg.find(path), std::string::npos) << path << ": " << msg;
    (expect_valid ? valid : malformed)++;
  }
  EXPECT_GE(malformed, 30);
  EXPECT_GE(valid, 1);
}

// Every truncation and many random byte flips of a valid file: open either succeeds (and
// every tensor then reads) or throws anvil::Error; anything else fails or crashes the test.
TEST(SafetensorsFile, TruncationsAndByteFlipsNeverCrash) {
  TempDir dir;
  const std::string valid = encode_safetensors(
      {{"a", Tensor::from_vector(std::vector<int32_t>{1, 2, 3}, {3})},
       {"b", Tensor::from_vector(std::vector<float>{0.5f, 1.5f}, {1, 2}).to(DType::F16)},
       {"c", Tensor::from_vector(std::vector<float>(5, 2.0f), {5})}},
      {{"format", "pt"}});
  const std::string path = dir.file("mutant.safetensors");
  int opened = 0, rejected = 0;
  auto attempt = [&](const std::string& bytes) {
    write_file(path, bytes);
    const std::string msg = error_of([&] {
      SafetensorsFile f = SafetensorsFile::open(path);
      for (const std::string& name : f.names()) f.get_f32(name);
    });
    if (msg == "(no error)") ++opened;
    else {
      ++rejected;
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
    }
  };
  for (size_t n = 0; n < valid.size(); ++n) attempt(valid.substr(0, n));
  EXPECT_EQ(opened, 0) << "a truncated file opened";
  PhiloxStream rng(7, 1);
  uint64_t k = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    std::string bytes = valid;
    const int flips = 1 + rng.u32(k++) % 3;
    for (int f = 0; f < flips; ++f) {
      // Mostly the header (where the structure is), sometimes the length prefix.
      const bool in_prefix = rng.u32(k++) % 8 == 0;
      const size_t at = rng.u32(k++) % (in_prefix ? 8 : bytes.size());
      bytes[at] = static_cast<char>(rng.u32(k++) & 0xff);
    }
    attempt(bytes);
  }
  EXPECT_GT(rejected, 1000);
  EXPECT_GT(opened, 0);  // flips inside the data region stay valid files
}

// ---- sharded checkpoints --------------------------------------------------

// Writes a two-shard checkpoint (a, b in shard 1; c in shard 2) with `weight_map` JSON.
void write_two_shards(const TempDir& dir, const std::string& weight_map) {
  write_safetensors(dir.file("s1.safetensors"), {{"a", Tensor::full({2}, 1.0)}, {"b", Tensor::full({3}, 2.0)}});
  write_safetensors(dir.file("s2.safetensors"), {{"c", Tensor::full({4}, 3.0)}});
  write_file(dir.file("model.safetensors.index.json"),
             R"({"metadata": {"total_size": 36}, "weight_map": )" + weight_map + "}");
}

std::string index_error(const TempDir& dir) {
  return error_of([&] { SafetensorsIndex::open(dir.file("")); });
}

TEST(SafetensorsIndex, ConsistentIndexOpens) {
  TempDir dir;
  write_two_shards(dir, R"({"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"})");
  SafetensorsIndex index = SafetensorsIndex::open(dir.file(""));
  EXPECT_EQ(index.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(index.get_f32("c").to_vector(), std::vector<float>(4, 3.0f));
  EXPECT_EQ(index.total_size(), 36u);
}

TEST(SafetensorsIndex, MissingShardIsNamed) {
  TempDir dir;
  write_two_shards(dir, R"({"a": "s1.safetensors", "b": "s1.safetensors", "c": "s3.safetensors"})");
  const std::string msg = index_error(dir);
  EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("s3.safetensors' (holding tensor 'c') is missing"), std::string::npos) << msg;
}

TEST(SafetensorsIndex, TensorAbsentFromItsShardIsNamed) {
  TempDir dir;
  write_two_shards(dir, R"({"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors", "d": "s2.safetensors"})");
  const std::string msg = index_error(dir);
  EXPECT_NE(msg.find("tensor 'd' is listed in shard '" + dir.file("s2.safetensors") + "' but is not in it"),
            std::string::npos) << msg;
}

TEST(SafetensorsIndex, TensorInTwoShardsIsNamed) {
  TempDir dir;
  write_two_shards(dir, R"({"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"})");
  write_safetensors(dir.file("s2.safetensors"), {{"c", Tensor::full({4}, 3.0)}, {"b", Tensor::full({3}, 2.0)}});
  const std::string msg = index_error(dir);
  EXPECT_NE(msg.find("tensor 'b' is in two shards"), std::string::npos) << msg;
  EXPECT_NE(msg.find("s1.safetensors"), std::string::npos) << msg;
}

TEST(SafetensorsIndex, UnlistedTensorInShardIsNamed) {
  TempDir dir;
  write_two_shards(dir, R"({"a": "s1.safetensors", "c": "s2.safetensors"})");
  const std::string msg = index_error(dir);
  EXPECT_NE(msg.find("tensor 'b' is in shard"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not list it"), std::string::npos) << msg;
}

TEST(SafetensorsIndex, MalformedIndexFilesAreNamed) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "is not valid JSON"},
      {"[]", "is a JSON array, not an object"},
      {R"({"metadata": {}})", "has no 'weight_map' object"},
      {R"({"weight_map": {"a": 3}})", "weight_map['a'] is 3, not a file name"},
      {R"({"weight_map": {"a": "../s1.safetensors"}})", "not a file inside the checkpoint directory"},
      {R"({"weight_map": {"a": "/etc/passwd"}})", "not a file inside the checkpoint directory"},
      {R"({"metadata": {"total_size": -1}, "weight_map": {}})", "metadata.total_size is -1"},
      {"{\"weight_map\": {\"a\xff\xfe\": \"s1.safetensors\"}}", "is not valid JSON"},  // a non-UTF-8 name
      {R"({"metadata": {"total_size": 36}, "weight_map": {"a": "s1.safe)", "is not valid JSON"},  // truncated
      {R"({"weight_map": {"a": "."}})", "(holding tensor 'a') is missing"},  // a directory
  };
  for (const auto& [text, expected] : cases) {
    TempDir dir;
    write_file(dir.file("model.safetensors.index.json"), text);
    const std::string msg = index_error(dir);
    EXPECT_NE(msg.find(dir.file("model.safetensors.index.json")), std::string::npos) << text << ": " << msg;
    EXPECT_NE(msg.find(expected), std::string::npos) << text << ": " << msg;
  }
}

TEST(SafetensorsIndex, MalformedShardIsNamed) {
  TempDir dir;
  write_two_shards(dir, R"({"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"})");
  write_file(dir.file("s2.safetensors"), le64(2) + "[]");
  const std::string msg = index_error(dir);
  EXPECT_NE(msg.find("'" + dir.file("s2.safetensors") + "'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not an object"), std::string::npos) << msg;
}

TEST(SafetensorsIndex, AmbiguousOrEmptyDirectoryIsAnError) {
  TempDir dir;
  EXPECT_NE(index_error(dir).find("holds neither model.safetensors.index.json nor model.safetensors"),
            std::string::npos) << index_error(dir);
  write_two_shards(dir, R"({"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"})");
  write_safetensors(dir.file("model.safetensors"), {{"a", Tensor::full({2}, 1.0)}});
  EXPECT_NE(index_error(dir).find("holds both"), std::string::npos) << index_error(dir);
}

}  // namespace
