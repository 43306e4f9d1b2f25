// data/safetensors: round trips, the byte layout the safetensors package writes, exact
// bf16/f16 -> f32, views on the mapping, sharded checkpoints, and (when the Python
// `safetensors` package is installed) interchange with it. Malformed inputs are in
// safetensors_malformed_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "data/safetensors.h"
#include "tests/support/data_fixtures.h"
#include "tests/support/reference.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing::random_tensor;
using anvil::testing_data::read_bytes;
using anvil::testing_data::TempDir;
using anvil::testing_data::write_file;
namespace fs = std::filesystem;

namespace {

// Bitwise equality of dtype, shape and contents.
void expect_identical(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const Tensor w = want.contiguous(), g = got.contiguous();
  if (w.nbytes() > 0) EXPECT_EQ(std::memcmp(g.raw_data(), w.raw_data(), w.nbytes()), 0) << what;
}

Tensor ints(std::vector<int32_t> v, const Shape& shape) { return Tensor::from_vector(v, shape); }

TensorMap mixed_tensors() {
  Tensor i64 = Tensor::empty({3}, DType::I64);
  const int64_t big[3] = {-(int64_t(1) << 40), 0, (int64_t(1) << 50) + 7};
  std::memcpy(i64.raw_data(), big, sizeof big);
  return {
      {"model.embed_tokens.weight", random_tensor({5, 4}, 1)},
      {"model.layers.0.mlp.up_proj.weight", random_tensor({3, 4}, 2).to(DType::BF16)},
      {"model.norm.weight", random_tensor({4}, 3).to(DType::F16)},
      {"ids", ints({1, -2, 3, 2147483647, -2147483647 - 1, 0}, {2, 3})},
      {"position_ids", i64},
      {"signed_bytes", ints({-128, 127, 0}, {3}).to(DType::I8)},
      {"bytes", ints({0, 255, 7, 9}, {2, 2}).to(DType::U8)},
      {"scalar", Tensor::full({}, 2.5)},
      {"empty", Tensor::empty({0, 3}, DType::BF16)},
  };
}

TEST(SafetensorsFile, RoundTripsEveryDtypeAndMetadata) {
  TempDir dir;
  const TensorMap tensors = mixed_tensors();
  const StringMap metadata = {{"format", "pt"}, {"note", "ünïcode ✓"}, {"empty", ""}};
  write_safetensors(dir.file("m.safetensors"), tensors, metadata);
  EXPECT_FALSE(fs::exists(dir.file("m.safetensors.tmp")));

  SafetensorsFile f = SafetensorsFile::open(dir.file("m.safetensors"));
  EXPECT_EQ(f.metadata(), metadata);
  std::vector<std::string> want_names;
  for (const auto& kv : tensors) want_names.push_back(kv.first);
  EXPECT_EQ(f.names(), want_names);
  for (const auto& [name, t] : tensors) {
    EXPECT_TRUE(f.contains(name));
    EXPECT_TRUE(f.info(name).supported);
    EXPECT_EQ(f.info(name).format_dtype, safetensors_dtype_name(t.dtype())) << name;
    expect_identical(f.tensor(name), t, name);
  }
  EXPECT_EQ(f.info("model.norm.weight").format_dtype, "F16");
  EXPECT_EQ(f.info("position_ids").shape, (Shape{3}));
}

TEST(SafetensorsFile, WritesTheLayoutOfTheSafetensorsPackage) {
  const TensorMap tensors = mixed_tensors();
  const std::string bytes = encode_safetensors(tensors, {{"format", "pt"}});
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  ASSERT_EQ(n % 8, 0u);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\"},\"position_ids\":{\"dtype\":\"I64\",\"shape\":[3],"
                         "\"data_offsets\":[0,24]},\"model.embed_tokens.weight\":{\"dtype\":\"F32\"", 0), 0u)
      << header;
  const size_t json_end = header.find_last_of('}');
  EXPECT_EQ(header.find_first_not_of(' ', json_end + 1), std::string::npos) << "padding must be spaces";
  EXPECT_LT(header.size() - json_end - 1, 8u);

  // Order: element size descending (I64, F32, I32, BF16, F16, I8, U8), names within; each aligned.
  const auto j = nlohmann::ordered_json::parse(header);
  std::vector<std::string> order;
  uint64_t expect_begin = 0;
  for (const auto& [name, e] : j.items()) {
    if (name == "__metadata__") continue;
    order.push_back(name);
    const uint64_t begin = e["data_offsets"][0], end = e["data_offsets"][1];
    EXPECT_EQ(begin, expect_begin) << name;
    EXPECT_EQ((8 + n + begin) % dtype_size(tensors.at(name).dtype()), 0u) << name << " misaligned";
    expect_begin = end;
  }
  EXPECT_EQ(order, (std::vector<std::string>{"position_ids", "model.embed_tokens.weight", "scalar", "ids",
                                             "empty", "model.layers.0.mlp.up_proj.weight", "model.norm.weight",
                                             "signed_bytes", "bytes"}));
  EXPECT_EQ(bytes.size(), 8 + n + expect_begin);

  // No metadata: no __metadata__ key at all, as safetensors.serialize(t) writes.
  const std::string plain = encode_safetensors({{"x", Tensor::full({1}, 1.0)}});
  EXPECT_EQ(plain.substr(8, 56), std::string("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}") +
                                     std::string(2, ' '));
}

TEST(SafetensorsFile, WritesNonContiguousTensorsInLogicalOrder) {
  TempDir dir;
  const Tensor base = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  write_safetensors(dir.file("t.safetensors"), {{"t", base.transpose(0, 1)}});
  EXPECT_EQ(SafetensorsFile::open(dir.file("t.safetensors")).get_f32("t").to_vector(),
            (std::vector<float>{1, 4, 2, 5, 3, 6}));
}

TEST(SafetensorsFile, Bf16AndF16ConvertExactlyForEveryBitPattern) {
  TempDir dir;
  Tensor bf = Tensor::empty({65536}, DType::BF16), hf = Tensor::empty({65536}, DType::F16);
  for (uint32_t b = 0; b < 65536; ++b) {
    bf.data<bf16_t>()[b].bits = static_cast<uint16_t>(b);
    hf.data<f16_t>()[b].bits = static_cast<uint16_t>(b);
  }
  write_safetensors(dir.file("all.safetensors"), {{"bf", bf}, {"hf", hf}});
  SafetensorsFile f = SafetensorsFile::open(dir.file("all.safetensors"));
  const Tensor bf32 = f.get_f32("bf"), hf32 = f.get_f32("hf");
  ASSERT_EQ(bf32.dtype(), DType::F32);
  EXPECT_FALSE(bf32.same_storage(f.tensor("bf")));
  for (uint32_t b = 0; b < 65536; ++b) {
    // bf16 is the top half of an f32: the bits must carry over unchanged (NaNs included).
    ASSERT_EQ(float_bits(bf32.data<float>()[b]), b << 16) << "bf16 0x" << std::hex << b;
    // f16 by its definition: (-1)^s * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * m/1024.
    const int sign = b >> 15, e = (b >> 10) & 31, m = b & 1023;
    const float got = hf32.data<float>()[b];
    ASSERT_EQ(std::signbit(got), sign == 1) << "f16 0x" << std::hex << b;
    if (e == 31) {
      ASSERT_TRUE(m == 0 ? std::isinf(got) : std::isnan(got)) << "f16 0x" << std::hex << b;
      continue;
    }
    const double mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
    ASSERT_EQ(static_cast<double>(got), sign ? -mag : mag) << "f16 0x" << std::hex << b;
  }
}

TEST(SafetensorsFile, GetF32ConvertsIntegersOnlyWhenExact) {
  TempDir dir;
  Tensor big = Tensor::empty({2}, DType::I64);
  const int64_t v[2] = {1 << 24, (1 << 24) + 1};
  std::memcpy(big.raw_data(), v, sizeof v);
  write_safetensors(dir.file("i.safetensors"), {{"small", ints({-3, 0, 1 << 24}, {3})}, {"big", big}});
  SafetensorsFile f = SafetensorsFile::open(dir.file("i.safetensors"));
  EXPECT_EQ(f.get_f32("small").to_vector(), (std::vector<float>{-3, 0, 16777216}));
  const std::string msg = error_of([&] { f.get_f32("big"); });
  EXPECT_NE(msg.find("tensor 'big'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("element 1 = 16777217 is not exactly representable"), std::string::npos) << msg;
}

TEST(SafetensorsFile, ViewsShareTheMappingAndOutliveTheFileObject) {
  TempDir dir;
  const std::string path = dir.file("v.safetensors");
  const Tensor a = random_tensor({64}, 4), b = random_tensor({8, 8}, 5);
  write_safetensors(path, {{"a", a}, {"b", b}});
  const std::string on_disk = read_bytes(path);
  Tensor va, vb;
  {
    SafetensorsFile f = SafetensorsFile::open(path);
    va = f.tensor("a");
    vb = f.tensor("b");
    Tensor again = f.tensor("a");
    // Views point into one mapping: their addresses differ by the offsets in the header.
    EXPECT_EQ(static_cast<char*>(vb.raw_data()) - static_cast<char*>(va.raw_data()),
              static_cast<ptrdiff_t>(f.info("b").begin) - static_cast<ptrdiff_t>(f.info("a").begin));
    EXPECT_EQ(again.raw_data(), va.raw_data());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(va.raw_data()) % 4096, (f.data_offset() + f.info("a").begin) % 4096);
  }
  fs::remove(path);  // the mapping keeps the data alive without the name or the file object
  expect_identical(va, a, "a after the file object is gone");
  expect_identical(vb, b, "b after the file object is gone");

  // Writing into a view is private copy-on-write: the file never changes.
  write_file(path, on_disk);
  Tensor w = SafetensorsFile::open(path).tensor("b");
  w.fill_(0.0);
  EXPECT_EQ(w.to_vector(), std::vector<float>(64, 0.0f));
  EXPECT_EQ(read_bytes(path), on_disk);
  expect_identical(SafetensorsFile::open(path).tensor("b"), b, "b reopened");
}

// A file from another writer may put a tensor at an unaligned offset (legal in the
// format); it still reads, as an aligned copy.
TEST(SafetensorsFile, MisalignedTensorIsReturnedAsAnAlignedCopy) {
  TempDir dir;
  const std::string header =
      R"({"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  const float w[2] = {1.25f, -3.0f};
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  bytes += header + "\x07" + std::string(reinterpret_cast<const char*>(w), 8);
  write_file(dir.file("m.safetensors"), bytes);
  SafetensorsFile f = SafetensorsFile::open(dir.file("m.safetensors"));
  const Tensor t = f.tensor("w");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 4, 0u);
  EXPECT_EQ(t.to_vector(), (std::vector<float>{1.25f, -3.0f}));
  EXPECT_EQ(f.tensor("u").to_vector(), (std::vector<float>{7}));
}

TEST(SafetensorsFile, BoolReadsAsU8AndUnsupportedDtypesFailOnRead) {
  TempDir dir;
  const std::string header =
      R"({"__metadata__":null,"d":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"m":{"dtype":"BOOL","shape":[2],"data_offsets":[8,10]}})";
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  bytes += header + std::string(8, '\0') + std::string("\x01\x00", 2);
  write_file(dir.file("m.safetensors"), bytes);
  SafetensorsFile f = SafetensorsFile::open(dir.file("m.safetensors"));
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.info("m").dtype, DType::U8);
  EXPECT_EQ(f.tensor("m").to_vector(), (std::vector<float>{1, 0}));
  EXPECT_FALSE(f.info("d").supported);
  EXPECT_EQ(f.info("d").format_dtype, "F64");
  for (const std::string& msg : {error_of([&] { f.tensor("d"); }), error_of([&] { f.get_f32("d"); })}) {
    EXPECT_NE(msg.find("'" + dir.file("m.safetensors") + "': tensor 'd': dtype F64 has no anvil equivalent"),
              std::string::npos) << msg;
  }
}

TEST(SafetensorsFile, UnknownNameAndUnreadablePathAreErrors) {
  TempDir dir;
  write_safetensors(dir.file("m.safetensors"), {{"a", Tensor::full({1}, 1.0)}});
  SafetensorsFile f = SafetensorsFile::open(dir.file("m.safetensors"));
  std::string msg = error_of([&] { f.tensor("model.nope"); });
  EXPECT_NE(msg.find("tensor 'model.nope': not in this file"), std::string::npos) << msg;
  msg = error_of([&] { SafetensorsFile::open(dir.file("absent.safetensors")); });
  EXPECT_NE(msg.find("absent.safetensors': cannot open: No such file"), std::string::npos) << msg;
  msg = error_of([&] { SafetensorsFile::open(dir.file("")); });
  EXPECT_NE(msg.find("not a regular file"), std::string::npos) << msg;
}

TEST(SafetensorsWriter, RefusesWhatTheFormatCannotHold) {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  const Tensor one = Tensor::full({1}, 1.0);
  EXPECT_NE(error_of([&] { write_safetensors(path, {{"__metadata__", one}}); }).find("may not be named '__metadata__'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { write_safetensors(path, {{"bad\xff", one}}); }).find("not valid UTF-8"), std::string::npos);
  EXPECT_NE(error_of([&] { write_safetensors(path, {{"a", one}}, {{"k", "\xc0\x80"}}); }).find("not valid UTF-8"),
            std::string::npos);
  EXPECT_NE(error_of([&] { write_safetensors(path, {{"u", Tensor()}}); }).find("tensor 'u' is undefined"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(path));
  const std::string msg = error_of([&] { write_safetensors(dir.file("no/such/dir.safetensors"), {{"a", one}}); });
  EXPECT_NE(msg.find("cannot create"), std::string::npos) << msg;
}

TEST(SafetensorsWriter, ReplacesAnExistingFileOnlyWhenComplete) {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  write_safetensors(path, {{"a", Tensor::full({2}, 1.0)}});
  SafetensorsFile old = SafetensorsFile::open(path);
  const Tensor old_view = old.tensor("a");
  write_safetensors(path, {{"a", Tensor::full({3}, 2.0)}});  // rename: the old mapping stays valid
  EXPECT_EQ(old_view.to_vector(), std::vector<float>(2, 1.0f));
  EXPECT_EQ(SafetensorsFile::open(path).get_f32("a").to_vector(), std::vector<float>(3, 2.0f));
}

TEST(SafetensorsSharded, RoundTripsAcrossShards) {
  TempDir dir;
  TensorMap tensors;
  for (int i = 0; i < 7; ++i)  // 64..448 floats: 256..1792 bytes each, 7168 in all
    tensors["model.layers." + std::to_string(i) + ".weight"] = random_tensor({i + 1, 64}, 10 + i).to(
        i % 2 ? DType::BF16 : DType::F32);
  tensors["lm_head.weight"] = random_tensor({40, 64}, 30);  // 10240 bytes: larger than a shard
  const auto files = write_safetensors_sharded(dir.file("ckpt"), tensors, 3000, {{"step", "12"}});
  ASSERT_GT(files.size(), 3u);
  EXPECT_EQ(files.back(), "model.safetensors.index.json");
  EXPECT_EQ(files.front(), "model-00001-of-0000" + std::to_string(files.size() - 1) + ".safetensors");

  uint64_t total = 0;
  for (const auto& kv : tensors) total += kv.second.nbytes();
  for (const std::string& path : {dir.file("ckpt"), dir.file("ckpt/model.safetensors.index.json")}) {
    SafetensorsIndex index = SafetensorsIndex::open(path);
    EXPECT_EQ(index.shards().size(), files.size() - 1);
    EXPECT_EQ(index.total_size(), total);
    EXPECT_EQ(index.names().size(), tensors.size());
    for (const auto& [name, t] : tensors) {
      expect_identical(index.tensor(name), t, name);
      EXPECT_EQ(index.info(name).shape, t.shape());
    }
    for (const SafetensorsFile& shard : index.shards()) {
      EXPECT_EQ(shard.metadata(), (StringMap{{"format", "pt"}, {"step", "12"}}));
      uint64_t bytes = 0;
      for (const std::string& name : shard.names()) bytes += index.info(name).end - index.info(name).begin;
      EXPECT_TRUE(bytes <= 3000 || shard.names().size() == 1) << shard.path() << " holds " << bytes << " bytes";
    }
    EXPECT_EQ(index.file_of("lm_head.weight").names(), std::vector<std::string>{"lm_head.weight"});
  }
  const auto j = nlohmann::json::parse(read_bytes(dir.file("ckpt/model.safetensors.index.json")));
  EXPECT_EQ(j["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(j["weight_map"].size(), tensors.size());
  const std::string msg = error_of([&] { SafetensorsIndex::open(dir.file("ckpt")).tensor("nope"); });
  EXPECT_NE(msg.find("tensor 'nope' is in none of its"), std::string::npos) << msg;
}

TEST(SafetensorsSharded, OneShardIsASingleModelFile) {
  TempDir dir;
  const TensorMap tensors = mixed_tensors();
  EXPECT_EQ(write_safetensors_sharded(dir.file("ckpt"), tensors, uint64_t(5) << 30),
            std::vector<std::string>{"model.safetensors"});
  EXPECT_FALSE(fs::exists(dir.file("ckpt/model.safetensors.index.json")));
  for (const std::string& path : {dir.file("ckpt"), dir.file("ckpt/model.safetensors")}) {
    SafetensorsIndex index = SafetensorsIndex::open(path);
    EXPECT_FALSE(index.total_size().has_value());
    for (const auto& [name, t] : tensors) expect_identical(index.tensor(name), t, name);
  }
  // A sharded save into the same directory would leave two checkpoints: refused.
  const std::string msg = error_of([&] { write_safetensors_sharded(dir.file("ckpt"), tensors, 8); });
  EXPECT_NE(msg.find("already holds 'model.safetensors'"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { write_safetensors_sharded(dir.file("x"), tensors, 0); }).find("max_shard_bytes is 0"),
            std::string::npos);
}

// Interchange with the Python package: it must parse our file and, re-serializing what it
// read with the same metadata, produce the same bytes (so it writes what we read, too).
TEST(SafetensorsInterop, PythonPackageReadsAndRewritesIdenticalBytes) {
  const std::string python = ANVIL_PYPI_PYTHON;
  // make test installs the package (scripts/install_deps.sh); its absence is a failure, not a skip.
  ASSERT_FALSE(python.empty()) << "no python3 on PATH at configure time";
  ASSERT_EQ(std::system((python + " -c 'import safetensors' 2>/dev/null").c_str()), 0)
      << "the Python safetensors package is missing — run `make deps` (pip install safetensors==0.8.0)";
  TempDir dir;
  const std::string ours = dir.file("ours.safetensors"), theirs = dir.file("theirs.safetensors");
  write_safetensors(ours, mixed_tensors(), {{"format", "pt"}});
  const std::string cmd = python + " " + anvil::testing::source_path("tests/unit/safetensors_interop.py") + " " +
                          ours + " " + theirs + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  EXPECT_EQ(read_bytes(theirs), read_bytes(ours));
  SafetensorsFile f = SafetensorsFile::open(theirs);
  for (const auto& [name, t] : mixed_tensors()) expect_identical(f.tensor(name), t, name);
}

}  // namespace
