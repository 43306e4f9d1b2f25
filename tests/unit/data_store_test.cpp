// data/token_store: round trips, the temp-then-rename protocol, and every kind of
// damaged file (written here with the HDF5 C API) turning into a clear anvil::Error.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <filesystem>
#include <map>
#include <optional>

#include "tests/support/reference.h"
#include "core/rng.h"
#include "data/token_store.h"
#include "tests/support/data_fixtures.h"

using namespace anvil;
using namespace anvil::testing_data;
namespace fs = std::filesystem;

using anvil::testing::error_of;

namespace {

// Random documents with lengths 0..max_len-1 and ids in [0, vocab).
std::vector<std::vector<int32_t>> random_docs(int n, int max_len, int64_t vocab, uint64_t seed) {
  PhiloxStream rng(seed, 1);
  std::vector<std::vector<int32_t>> docs(n);
  uint64_t k = 0;
  for (auto& d : docs) {
    d.resize(rng.u32(k++) % max_len);
    for (auto& t : d) t = static_cast<int32_t>(rng.u32(k++) % vocab);
  }
  return docs;
}

void expect_same(const TokenStore& s, const std::vector<std::vector<int32_t>>& docs,
                 const std::vector<std::vector<uint8_t>>& masks) {
  ASSERT_EQ(s.num_documents(), static_cast<int64_t>(docs.size()));
  int64_t total = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    ASSERT_EQ(s.doc_offsets()[d], total);
    total += docs[d].size();
    ASSERT_EQ(s.document(d), docs[d]) << "document " << d;
    const std::vector<uint8_t> want = masks.empty() ? std::vector<uint8_t>(docs[d].size(), 1) : masks[d];
    ASSERT_EQ(s.document_mask(d), want) << "document " << d;
  }
  EXPECT_EQ(s.num_tokens(), total);
  EXPECT_EQ(s.doc_offsets().back(), total);
}

// A hand-made store for the damaged-file tests; every field can be wrong or absent.
struct RawStore {
  std::optional<std::vector<int32_t>> tokens = std::vector<int32_t>{5, 6, 7, 0, 8, 9, 0};
  hid_t tokens_type = H5T_STD_U16LE;
  bool tokens_rank2 = false;
  std::optional<std::vector<int64_t>> offsets = std::vector<int64_t>{0, 4, 7};
  std::optional<std::vector<uint8_t>> mask;
  std::map<std::string, int64_t> ints = {{"format_version", 1}, {"vocab_size", 100}, {"eos_id", 0},
                                         {"num_documents", 2}, {"num_tokens", 7}};
  std::map<std::string, std::string> strings = {{"tokenizer_hash", "h"}, {"source", "raw"}};

  template <class T>
  static void dataset(hid_t file, const char* name, hid_t file_type, hid_t mem_type, const std::vector<T>& v,
                      bool rank2 = false) {
    const hsize_t dims1[1] = {v.size()}, dims2[2] = {1, v.size()};
    hid_t space = rank2 ? H5Screate_simple(2, dims2, nullptr) : H5Screate_simple(1, dims1, nullptr);
    hid_t ds = H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(ds, 0);
    ASSERT_GE(H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), 0);
    H5Dclose(ds);
    H5Sclose(space);
  }

  void write(const std::string& path) const {
    hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    if (tokens) dataset(file, "tokens", tokens_type, H5T_NATIVE_INT32, *tokens, tokens_rank2);
    if (offsets) dataset(file, "doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, *offsets);
    if (mask) dataset(file, "loss_mask", H5T_STD_U8LE, H5T_NATIVE_UINT8, *mask);
    hid_t scalar = H5Screate(H5S_SCALAR);
    for (const auto& [name, value] : ints) {
      hid_t a = H5Acreate2(file, name.c_str(), H5T_STD_I64LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
      H5Awrite(a, H5T_NATIVE_INT64, &value);
      H5Aclose(a);
    }
    for (const auto& [name, value] : strings) {  // variable-length, as h5py writes them
      hid_t type = H5Tcopy(H5T_C_S1);
      H5Tset_size(type, H5T_VARIABLE);
      hid_t a = H5Acreate2(file, name.c_str(), type, scalar, H5P_DEFAULT, H5P_DEFAULT);
      const char* p = value.c_str();
      H5Awrite(a, type, &p);
      H5Aclose(a);
      H5Tclose(type);
    }
    H5Sclose(scalar);
    H5Fclose(file);
  }
};

}  // namespace

class TokenStoreRoundTrip : public ::testing::TestWithParam<int64_t> {};

// Over 2M tokens, so the writer flushes whole chunks several times.
TEST_P(TokenStoreRoundTrip, WithoutMask) {
  TempDir tmp;
  const int64_t vocab = GetParam();
  const auto docs = random_docs(1200, 3500, vocab, 11);
  write_store(tmp.file("s.h5"), docs, {}, vocab, "hash-a", 3);
  const TokenStore s = TokenStore::open(tmp.file("s.h5"));
  EXPECT_EQ(s.info().tokenizer_hash, "hash-a");
  EXPECT_EQ(s.info().vocab_size, vocab);
  EXPECT_EQ(s.info().eos_id, 3);
  EXPECT_EQ(s.info().source, "test");
  EXPECT_EQ(s.token_bytes(), vocab <= 65536 ? 2 : 4);
  EXPECT_FALSE(s.has_loss_mask());
  EXPECT_EQ(s.loss_mask(), nullptr);
  expect_same(s, docs, {});
}

// Unmasked documents first (flushed before the mask exists, so they are back-filled
// with 1s), then masked ones, then unmasked again.
TEST_P(TokenStoreRoundTrip, WithMask) {
  TempDir tmp;
  const int64_t vocab = GetParam();
  const auto docs = random_docs(1500, 3000, vocab, 12);
  std::vector<std::vector<uint8_t>> masks(docs.size());
  PhiloxStream rng(5, 2);
  TokenStoreWriter w(tmp.file("m.h5"), TokenStoreInfo{"hash-m", vocab, 1, "test"});
  for (size_t d = 0; d < docs.size(); ++d) {
    const bool masked = d >= 900 && d < 1300;  // ~1.35M tokens precede the first mask
    masks[d].assign(docs[d].size(), 1);
    if (masked) {
      for (size_t i = 0; i < masks[d].size(); ++i) masks[d][i] = rng.u32(d * 4096 + i) & 1;
    }
    w.add_document(docs[d], masked ? &masks[d] : nullptr);
  }
  w.finish();
  const TokenStore s = TokenStore::open(tmp.file("m.h5"));
  ASSERT_TRUE(s.has_loss_mask());
  expect_same(s, docs, masks);
}

INSTANTIATE_TEST_SUITE_P(Vocab, TokenStoreRoundTrip, ::testing::Values(int64_t(300), int64_t(70000)));

TEST(TokenStore, EmptyDocumentsRoundTrip) {
  TempDir tmp;
  const std::vector<std::vector<int32_t>> docs = {{}, {1, 2}, {}, {3}};
  write_store(tmp.file("e.h5"), docs);
  const TokenStore s = TokenStore::open(tmp.file("e.h5"));
  expect_same(s, docs, {});
}

TEST(TokenStoreWriter, WritesTempFileAndRenamesOnFinish) {
  TempDir tmp;
  const std::string path = tmp.file("t.h5");
  TokenStoreWriter w(path, TokenStoreInfo{"h", 100, 0, "test"});
  EXPECT_EQ(w.temp_path(), path + ".tmp");
  EXPECT_TRUE(fs::exists(path + ".tmp"));
  EXPECT_FALSE(fs::exists(path));
  w.add_document({1, 2, 3, 0});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_NE(error_of([&] { TokenStore::open(path); }).find("did not finish"), std::string::npos);
  w.finish();
  EXPECT_TRUE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_EQ(TokenStore::open(path).num_tokens(), 4);
  EXPECT_NE(error_of([&] { w.add_document({1}); }).find("after finish"), std::string::npos);
}

TEST(TokenStoreWriter, AbandonedWriterLeavesNothing) {
  TempDir tmp;
  const std::string path = tmp.file("a.h5");
  {
    TokenStoreWriter w(path, TokenStoreInfo{"h", 100, 0, "test"});
    for (int d = 0; d < 1000; ++d) w.add_document(std::vector<int32_t>(1000, d % 100));
    ASSERT_TRUE(fs::exists(path + ".tmp"));
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST(TokenStoreWriter, AbandonedWriterKeepsAnOlderCompleteStore) {
  TempDir tmp;
  const std::string path = tmp.file("k.h5");
  write_store(path, {{1, 2, 0}});
  { TokenStoreWriter w(path, TokenStoreInfo{"h", 100, 0, "test"}); w.add_document({5, 5, 5, 5}); }
  EXPECT_EQ(TokenStore::open(path).num_tokens(), 3);
}

TEST(TokenStoreWriter, RejectsBadInput) {
  TempDir tmp;
  TokenStoreWriter w(tmp.file("r.h5"), TokenStoreInfo{"h", 100, 0, "test"});
  EXPECT_NE(error_of([&] { w.add_document({1, 100}); }).find("token id 100"), std::string::npos);
  EXPECT_NE(error_of([&] { w.add_document({1, -1}); }).find("token id -1"), std::string::npos);
  const std::vector<uint8_t> short_mask = {1};
  EXPECT_NE(error_of([&] { w.add_document({1, 2}, &short_mask); }).find("loss mask of 1"), std::string::npos);
  const std::vector<uint8_t> bad_mask = {1, 2};
  EXPECT_NE(error_of([&] { w.add_document({1, 2}, &bad_mask); }).find("loss-mask value 2"), std::string::npos);
  EXPECT_EQ(w.num_documents(), 0);  // nothing was half-added
  EXPECT_NE(error_of([&] { TokenStoreWriter(tmp.file("x.h5"), TokenStoreInfo{"h", 100, 100, ""}); })
                .find("eos_id 100"),
            std::string::npos);
  EXPECT_NE(error_of([&] { TokenStoreWriter(tmp.file("no/such/dir/x.h5"), TokenStoreInfo{"h", 100, 0, ""}); })
                .find("no/such/dir/x.h5"),
            std::string::npos);
}

TEST(TokenStoreOpen, MissingFileAndRandomBytes) {
  TempDir tmp;
  std::string msg = error_of([&] { TokenStore::open(tmp.file("nope.h5")); });
  EXPECT_NE(msg.find("nope.h5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;

  std::string junk(4096, '\0');
  PhiloxStream rng(1, 1);
  for (size_t i = 0; i < junk.size(); ++i) junk[i] = static_cast<char>(rng.u32(i));
  write_file(tmp.file("junk.h5"), junk);
  ::testing::internal::CaptureStderr();
  msg = error_of([&] { TokenStore::open(tmp.file("junk.h5")); });
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_NE(msg.find("junk.h5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not an HDF5 file"), std::string::npos) << msg;
}

// Every truncation point of a valid store is an Error naming the file, never a crash,
// and HDF5 prints nothing to stderr.
TEST(TokenStoreOpen, TruncatedCopies) {
  TempDir tmp;
  write_store(tmp.file("full.h5"), random_docs(200, 2000, 1000, 3));
  const std::string bytes = read_bytes(tmp.file("full.h5"));
  ASSERT_GT(bytes.size(), 100000u);
  for (double frac : {0.001, 0.01, 0.1, 0.5, 0.9, 0.999}) {
    const size_t keep = static_cast<size_t>(frac * bytes.size());
    write_file(tmp.file("cut.h5"), bytes.substr(0, keep));
    ::testing::internal::CaptureStderr();
    const std::string msg = error_of([&] { TokenStore::open(tmp.file("cut.h5")); });
    EXPECT_EQ(::testing::internal::GetCapturedStderr(), "") << "keep " << keep;
    EXPECT_NE(msg.find("cut.h5"), std::string::npos) << "keep " << keep << ": " << msg;
    EXPECT_NE(msg.find("anvil data prepare"), std::string::npos) << "keep " << keep << ": " << msg;
  }
}

// A flipped bit inside the token data fails the chunk's Fletcher-32 checksum.
TEST(TokenStoreOpen, FlippedBitInTokenData) {
  TempDir tmp;
  write_store(tmp.file("ok.h5"), random_docs(200, 2000, 1000, 4));
  std::string bytes = read_bytes(tmp.file("ok.h5"));
  ASSERT_NO_THROW(TokenStore::open(tmp.file("ok.h5")));
  bytes[bytes.size() / 2] ^= 0x10;
  write_file(tmp.file("flip.h5"), bytes);
  const std::string msg = error_of([&] { TokenStore::open(tmp.file("flip.h5")); });
  EXPECT_NE(msg.find("flip.h5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checksum"), std::string::npos) << msg;
}

TEST(TokenStoreOpen, RawStoreIsReadable) {  // the baseline the damaged variants start from
  TempDir tmp;
  RawStore().write(tmp.file("raw.h5"));
  const TokenStore s = TokenStore::open(tmp.file("raw.h5"));
  EXPECT_EQ(s.document(1), (std::vector<int32_t>{8, 9, 0}));
  EXPECT_EQ(s.info().tokenizer_hash, "h");  // variable-length string attribute
}

TEST(TokenStoreOpen, DamagedStores) {
  TempDir tmp;
  struct Case {
    const char* name;
    std::function<void(RawStore&)> damage;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"no tokens", [](RawStore& r) { r.tokens.reset(); }, "dataset 'tokens' is missing"},
      {"no offsets", [](RawStore& r) { r.offsets.reset(); }, "dataset 'doc_offsets' is missing"},
      {"offsets start", [](RawStore& r) { r.offsets = {1, 4, 7}; }, "doc_offsets[0] is 1"},
      {"offsets decrease", [](RawStore& r) { r.offsets = {0, 5, 4}; }, "decrease at document 1"},
      {"offsets end", [](RawStore& r) { r.offsets = {0, 4, 6}; }, "doc_offsets end at 6"},
      {"offsets count", [](RawStore& r) { r.offsets = {0, 7}; }, "expected num_documents + 1 = 3"},
      {"token count", [](RawStore& r) { r.ints["num_tokens"] = 8; }, "num_tokens attribute says 8"},
      {"token range", [](RawStore& r) { (*r.tokens)[5] = 100; }, "token id 100 at position 5 (document 1)"},
      {"negative i32 id", [](RawStore& r) { r.tokens_type = H5T_STD_I32LE; (*r.tokens)[2] = -4; },
       "token id -4 at position 2 (document 0)"},
      {"float tokens", [](RawStore& r) { r.tokens_type = H5T_IEEE_F32LE; }, "element type float32"},
      {"int64 tokens", [](RawStore& r) { r.tokens_type = H5T_STD_I64LE; }, "element type int64"},
      {"rank 2 tokens", [](RawStore& r) { r.tokens_rank2 = true; }, "'tokens' has rank 2"},
      {"mask length", [](RawStore& r) { r.mask = std::vector<uint8_t>(6, 1); }, "'loss_mask' has 6 entries"},
      {"mask value", [](RawStore& r) { r.mask = std::vector<uint8_t>{1, 1, 1, 3, 1, 1, 1}; },
       "loss_mask value 3 at position 3"},
      {"no version", [](RawStore& r) { r.ints.erase("format_version"); }, "'format_version' is missing"},
      {"new version", [](RawStore& r) { r.ints["format_version"] = 2; }, "format_version 2"},
      {"no hash", [](RawStore& r) { r.strings.erase("tokenizer_hash"); }, "'tokenizer_hash' is missing"},
      {"no vocab", [](RawStore& r) { r.ints.erase("vocab_size"); }, "'vocab_size' is missing"},
      {"eos range", [](RawStore& r) { r.ints["eos_id"] = 100; }, "eos_id 100"},
  };
  for (const Case& c : cases) {
    RawStore raw;
    c.damage(raw);
    const std::string path = tmp.file("bad.h5");
    fs::remove(path);
    raw.write(path);
    ::testing::internal::CaptureStderr();
    const std::string msg = error_of([&] { TokenStore::open(path); });
    EXPECT_EQ(::testing::internal::GetCapturedStderr(), "") << c.name;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.name << ": " << msg;
    EXPECT_NE(msg.find("bad.h5"), std::string::npos) << c.name << ": " << msg;
  }
}

TEST(TokenStore, CheckTokenizer) {
  TempDir tmp;
  write_store(tmp.file("tok.h5"), {{1, 2, 0}}, {}, 1000, "sha256:aaaa");
  const TokenStore s = TokenStore::open(tmp.file("tok.h5"));
  EXPECT_NO_THROW(s.check_tokenizer("sha256:aaaa"));
  const std::string msg = error_of([&] { s.check_tokenizer("sha256:bbbb"); });
  EXPECT_NE(msg.find("tok.h5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("sha256:aaaa"), std::string::npos) << msg;
  EXPECT_NE(msg.find("sha256:bbbb"), std::string::npos) << msg;
  EXPECT_NE(msg.find("anvil data prepare"), std::string::npos) << msg;
}
