// data.packing: documents — the loader's document ids and restarted positions against a naive
// walk over the documents, packing: none unchanged, and the config key's validation.
#include <gtest/gtest.h>

#include <vector>

#include "data/loader.h"
#include "tests/support/data_fixtures.h"
#include "tests/support/reference.h"
#include "tests/unit/run_config_fixture.h"
#include "trainer/batch_context.h"

using namespace anvil;
using namespace anvil::testing_data;
using anvil::testing::error_of;

namespace {

constexpr int64_t kVocab = 1000;

// Documents of the given lengths (0 = empty, skipped by the stream), tokens counting up from 1.
std::shared_ptr<const TokenStore> make_store(const TempDir& tmp, const std::vector<int>& lengths) {
  std::vector<std::vector<int32_t>> docs(lengths.size());
  int32_t next = 1;
  for (size_t d = 0; d < lengths.size(); ++d) {
    docs[d].resize(static_cast<size_t>(lengths[d]));
    for (auto& t : docs[d]) t = next++;
  }
  write_store(tmp.file("store.h5"), docs, {}, kVocab);
  return std::make_shared<const TokenStore>(TokenStore::open(tmp.file("store.h5")));
}

// The naive answer: per stream token, its document's index and its offset in the document.
struct NaiveDocs {
  std::vector<int64_t> doc, offset;
  explicit NaiveDocs(const std::vector<int>& lengths) {
    for (size_t d = 0; d < lengths.size(); ++d)
      for (int i = 0; i < lengths[d]; ++i) {
        doc.push_back(static_cast<int64_t>(d));
        offset.push_back(i);
      }
  }
};

LoaderConfig config(int64_t T, int64_t B, Packing packing) {
  LoaderConfig c;
  c.seq_len = T;
  c.batch_size = B;
  c.valid_fraction = 0;
  c.shuffle = false;
  c.packing = packing;
  return c;
}

const std::vector<int> kLengths{5, 1, 0, 12, 3, 1, 1, 20, 2, 7};  // 52 tokens; a length-1 and an empty document

}  // namespace

TEST(LoaderPacking, DocumentsCarrySegmentsAndRestartedPositions) {
  TempDir tmp;
  const auto store = make_store(tmp, kLengths);
  const NaiveDocs naive(kLengths);
  const int64_t T = 8, B = 2;
  Loader loader(store, config(T, B, Packing::Documents), Split::Train);
  ASSERT_EQ(loader.num_samples(), (52 - 1) / T);
  for (int64_t step = 0; step < loader.num_samples() / B; ++step) {
    const Batch b = loader.next();
    ASSERT_TRUE(b.segment_ids.defined() && b.position_ids.defined());
    ASSERT_EQ(b.segment_ids.shape(), Shape({B, T}));
    for (int64_t r = 0; r < B; ++r) {
      const int64_t w = step * B + r, start = w * T;
      int64_t want_seg = 0;  // documents begun inside this window so far
      for (int64_t k = 0; k < T; ++k) {
        const int64_t s = start + k;
        if (k > 0 && naive.doc[s] != naive.doc[s - 1]) ++want_seg;
        const int64_t want_pos = std::min(naive.offset[s], k);  // restart at a document and at the window
        EXPECT_EQ(b.segment_ids.data<int32_t>()[r * T + k], want_seg) << "window " << w << " token " << k;
        EXPECT_EQ(b.position_ids.data<int32_t>()[r * T + k], want_pos) << "window " << w << " token " << k;
        EXPECT_EQ(b.ids.data<int32_t>()[r * T + k], static_cast<int32_t>(s + 1));
      }
    }
  }
}

TEST(LoaderPacking, NoneKeepsTodaysBatchesAndCarriesNoBoundaries) {
  TempDir tmp;
  const auto store = make_store(tmp, kLengths);
  Loader none(store, config(8, 3, Packing::None), Split::Train);
  Loader docs(store, config(8, 3, Packing::Documents), Split::Train);
  for (int i = 0; i < 4; ++i) {  // across an epoch end
    const Batch a = none.next(), b = docs.next();
    EXPECT_FALSE(a.segment_ids.defined() || a.position_ids.defined());
    EXPECT_EQ(anvil::testing::max_abs_diff(a.ids, b.ids), 0.0);
    EXPECT_EQ(anvil::testing::max_abs_diff(a.targets, b.targets), 0.0);
  }
}

TEST(LoaderPacking, BatchBecomesAStepContext) {
  TempDir tmp;
  const auto store = make_store(tmp, kLengths);
  Loader none(store, config(8, 2, Packing::None), Split::Train);
  EXPECT_EQ(make_step_context(none.next(), 64, Device::cpu()), nullptr) << "packing: none keeps today's path";
  Loader docs(store, config(8, 2, Packing::Documents), Split::Train);
  const Batch b = docs.next();
  const auto ctx = make_step_context(b, 64, Device::cpu());
  ASSERT_NE(ctx, nullptr);
  EXPECT_EQ(anvil::testing::max_abs_diff(ctx->position_ids, b.position_ids), 0.0);
  EXPECT_EQ(anvil::testing::max_abs_diff(ctx->mask.segment_ids, b.segment_ids), 0.0);
  EXPECT_NE(error_of([&] { make_step_context(b, 4, Device::cpu()); }).find("outside [0, 4)"), std::string::npos);
}

TEST(LoaderPacking, PackingNamesParseOrSayWhatIsValid) {
  EXPECT_EQ(packing_from_string("none"), Packing::None);
  EXPECT_EQ(packing_from_string("documents"), Packing::Documents);
  EXPECT_NE(error_of([] { packing_from_string("docs"); }).find("use none"), std::string::npos);
}

namespace {
using anvil::testing::contains;
using anvil::testing::kMinimal;
using anvil::testing::RunConfigTest;
}  // namespace

TEST_F(RunConfigTest, DataPackingDefaultsToNoneAcceptsDocumentsAndRefusesTheRest) {
  const RunConfig plain = load(kMinimal);
  EXPECT_EQ(plain.data.packing, "none");
  EXPECT_HAS(to_yaml(plain), "packing: none");
  const RunConfig packed = load(kMinimal, {"data.packing=documents"});
  EXPECT_EQ(packed.data.packing, "documents");
  EXPECT_EQ(parse_run_config(to_yaml(packed), "resolved", dir_.string()).data.packing, "documents")
      << "the resolved YAML round-trips";
  const std::string bad = error(kMinimal, {"data.packing=document"});
  EXPECT_HAS(bad, "data.packing");
  EXPECT_HAS(bad, "did you mean documents");
  const std::string sp = error(kMinimal, {"data.packing=documents", "parallel.sp=2", "model.num_key_value_heads=4"});
  EXPECT_HAS(sp, "documents needs parallel.sp = 1, got sp = 2");
}
