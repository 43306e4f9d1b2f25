// data/loader: windows against a naive reimplementation, masking, shuffling,
// epochs, resume, rank slicing and the document split.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "tests/support/reference.h"
#include "core/rng.h"
#include "data/loader.h"
#include "tests/support/data_fixtures.h"

using namespace anvil;
using namespace anvil::testing_data;

using anvil::testing::error_of;

namespace {

constexpr int64_t kVocab = int64_t(1) << 20;

// Documents of random length 0..max_len-1 whose ids count up from 1, so every token
// (and hence every window's first token) is unique; optional random masks.
std::shared_ptr<const TokenStore> make_store(const TempDir& tmp, int n_docs, int max_len, bool with_mask,
                                             uint64_t seed = 1) {
  PhiloxStream rng(seed, 7);
  std::vector<std::vector<int32_t>> docs(n_docs);
  std::vector<std::vector<uint8_t>> masks(n_docs);
  int32_t next = 1;
  uint64_t k = 0;
  for (int d = 0; d < n_docs; ++d) {
    docs[d].resize(rng.u32(k++) % max_len);
    for (auto& t : docs[d]) t = next++;
    masks[d].resize(docs[d].size());
    for (auto& m : masks[d]) m = (rng.u32(k++) % 3) != 0;
  }
  write_store(tmp.file("store.h5"), docs, with_mask ? masks : std::vector<std::vector<uint8_t>>{}, kVocab);
  return std::make_shared<const TokenStore>(TokenStore::open(tmp.file("store.h5")));
}

// The naive loader: concatenate the split's documents, cut windows of T + 1.
struct Naive {
  std::vector<int32_t> stream;
  std::vector<uint8_t> mask;
  int64_t T;
  int32_t ignore;

  Naive(const TokenStore& s, const std::vector<int64_t>& docs, int64_t seq_len, int32_t ignore_index)
      : T(seq_len), ignore(ignore_index) {
    for (int64_t d : docs) {
      const auto t = s.document(d);
      const auto m = s.document_mask(d);
      stream.insert(stream.end(), t.begin(), t.end());
      mask.insert(mask.end(), m.begin(), m.end());
    }
  }
  int64_t windows() const { return (static_cast<int64_t>(stream.size()) - 1) / T; }
  std::vector<int32_t> ids(int64_t w) const {
    return std::vector<int32_t>(stream.begin() + w * T, stream.begin() + w * T + T);
  }
  std::vector<int32_t> targets(int64_t w) const {
    std::vector<int32_t> out(T);
    for (int64_t k = 0; k < T; ++k) out[k] = mask[w * T + k + 1] ? stream[w * T + k + 1] : ignore;
    return out;
  }
};

std::vector<int32_t> row(const Tensor& t, int64_t r) {
  const int64_t T = t.size(1);
  const int32_t* p = t.data<int32_t>() + r * T;
  return std::vector<int32_t>(p, p + T);
}

// Window index of each sample of the next `n_batches` batches (identified by the
// unique first token of the window).
std::vector<int64_t> drain(Loader& loader, const Naive& naive, int n_batches) {
  std::map<int32_t, int64_t> first_token;
  for (int64_t w = 0; w < naive.windows(); ++w) first_token[naive.stream[w * naive.T]] = w;
  std::vector<int64_t> windows;
  for (int b = 0; b < n_batches; ++b) {
    const Batch batch = loader.next();
    for (int64_t r = 0; r < batch.ids.size(0); ++r) {
      const auto ids = row(batch.ids, r);
      const int64_t w = first_token.at(ids[0]);
      EXPECT_EQ(ids, naive.ids(w));
      EXPECT_EQ(row(batch.targets, r), naive.targets(w));
      windows.push_back(w);
    }
  }
  return windows;
}

std::vector<std::vector<int32_t>> batches(Loader& loader, int n) {
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < n; ++i) {
    const Batch b = loader.next();
    std::vector<int32_t> flat = row(b.ids.view({1, -1}), 0);
    const auto t = row(b.targets.view({1, -1}), 0);
    flat.insert(flat.end(), t.begin(), t.end());
    out.push_back(flat);
  }
  return out;
}

}  // namespace

// Unshuffled: batch k row i is window (k*B + i) mod num_samples, exactly as the naive loader cuts it.
TEST(Loader, WindowsMatchNaive) {
  TempDir tmp;
  const auto store = make_store(tmp, 60, 300, /*with_mask=*/false);
  for (Split split : {Split::Train, Split::Valid}) {
    const LoaderConfig cfg{/*seq_len=*/17, /*batch_size=*/5, /*seed=*/3, /*valid_fraction=*/0.25, /*shuffle=*/false};
    Loader loader(store, cfg, split);
    const Naive naive(*store, loader.documents(), cfg.seq_len, cfg.ignore_index);
    ASSERT_EQ(loader.num_samples(), naive.windows());
    ASSERT_GT(naive.windows(), 10);
    const int n_batches = static_cast<int>(2 * naive.windows() / cfg.batch_size + 3);  // into epoch 3
    const auto w = drain(loader, naive, n_batches);
    for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(w[i], static_cast<int64_t>(i) % naive.windows()) << i;
    EXPECT_EQ(loader.epoch(), static_cast<int64_t>(w.size()) / naive.windows());
  }
}

TEST(Loader, TargetsMaskedWhereMaskIsZero) {
  TempDir tmp;
  // Hand example: prompt p1 p2 (mask 0), response r1 + EOS (mask 1).
  write_store(tmp.file("chat.h5"), {{11, 12, 21, 0}, {13, 22, 0}}, {{0, 0, 1, 1}, {0, 1, 1}}, 100);
  auto chat = std::make_shared<const TokenStore>(TokenStore::open(tmp.file("chat.h5")));
  Loader small(chat, LoaderConfig{3, 2, 0, 0.0, false, -7}, Split::Train);
  ASSERT_EQ(small.num_samples(), 2);
  const Batch b = small.next();
  EXPECT_EQ(row(b.ids, 0), (std::vector<int32_t>{11, 12, 21}));
  EXPECT_EQ(row(b.targets, 0), (std::vector<int32_t>{-7, 21, 0}));
  EXPECT_EQ(row(b.ids, 1), (std::vector<int32_t>{0, 13, 22}));
  EXPECT_EQ(row(b.targets, 1), (std::vector<int32_t>{-7, 22, 0}));

  // Random masks against the naive loader, shuffled.
  const auto store = make_store(tmp, 50, 200, /*with_mask=*/true);
  const LoaderConfig cfg{16, 4, 9, 0.0, true};
  Loader loader(store, cfg, Split::Train);
  const Naive naive(*store, loader.documents(), cfg.seq_len, cfg.ignore_index);
  const auto w = drain(loader, naive, static_cast<int>(naive.windows() / 4));
  int64_t ignored = 0;
  for (int32_t m : naive.mask) ignored += m == 0;
  EXPECT_GT(ignored, 0);
}

TEST(Loader, ShuffleIsDeterministicFromTheSeed) {
  TempDir tmp;
  const auto store = make_store(tmp, 40, 300, false);
  const LoaderConfig cfg{8, 3, 42, 0.0, true};
  Loader a(store, cfg, Split::Train), b(store, cfg, Split::Train);
  LoaderConfig other = cfg;
  other.seed = 43;
  Loader c(store, other, Split::Train);
  const int n = static_cast<int>(3 * a.num_samples() / 3);
  const auto ba = batches(a, n), bb = batches(b, n), bc = batches(c, n);
  EXPECT_EQ(ba, bb);
  EXPECT_NE(ba, bc);
  LoaderConfig unshuffled = cfg;
  unshuffled.shuffle = false;
  Loader d(store, unshuffled, Split::Train);
  EXPECT_NE(ba, batches(d, n));
}

TEST(Loader, EachEpochVisitsEveryWindowOnce) {
  TempDir tmp;
  const auto store = make_store(tmp, 40, 300, false);
  const LoaderConfig cfg{10, 7, 5, 0.0, true};  // 7 does not divide num_samples: batches straddle epochs
  Loader loader(store, cfg, Split::Train);
  const Naive naive(*store, loader.documents(), cfg.seq_len, cfg.ignore_index);
  const int64_t n = naive.windows();
  ASSERT_NE(n % cfg.batch_size, 0);
  const auto w = drain(loader, naive, static_cast<int>((3 * n) / cfg.batch_size + 1));
  std::vector<std::vector<int64_t>> epochs;
  for (int e = 0; e < 3; ++e) {
    std::vector<int64_t> order(w.begin() + e * n, w.begin() + (e + 1) * n);
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sorted[i], i) << "epoch " << e;
    epochs.push_back(order);
  }
  EXPECT_NE(epochs[0], epochs[1]);  // a fresh permutation each epoch
  EXPECT_NE(epochs[1], epochs[2]);
}

TEST(Loader, ValidationIsNeverShuffled) {
  TempDir tmp;
  const auto store = make_store(tmp, 60, 300, false);
  Loader loader(store, LoaderConfig{9, 4, 1, 0.3, /*shuffle=*/true}, Split::Valid);
  const Naive naive(*store, loader.documents(), 9, -100);
  const auto w = drain(loader, naive, static_cast<int>(naive.windows() / 4));
  for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(w[i], static_cast<int64_t>(i));
}

TEST(Loader, RestoreContinuesTheSameSequence) {
  TempDir tmp;
  const auto store = make_store(tmp, 40, 300, false);
  const LoaderConfig cfg{8, 5, 11, 0.1, true};
  Loader a(store, cfg, Split::Train);
  const int per_epoch = static_cast<int>(a.num_samples() / cfg.batch_size);
  for (int skip : {per_epoch / 2, per_epoch + 1, 3 * per_epoch - 1}) {  // mid-epoch, and across boundaries
    Loader run(store, cfg, Split::Train);
    batches(run, skip);
    const LoaderState saved = run.state();
    EXPECT_EQ(saved.epoch * run.num_samples() + saved.position, int64_t(skip) * cfg.batch_size);
    const auto expected = batches(run, per_epoch + 3);
    Loader resumed(store, cfg, Split::Train);
    resumed.restore(saved);
    EXPECT_EQ(resumed.epoch(), saved.epoch);
    EXPECT_EQ(batches(resumed, per_epoch + 3), expected) << "skip " << skip;
  }

  const LoaderState saved = a.state();
  LoaderConfig longer = cfg;
  longer.seq_len = 9;
  Loader other_len(store, longer, Split::Train);
  std::string msg = error_of([&] { other_len.restore(saved); });
  EXPECT_NE(msg.find("seq_len 8 (saved) vs 9 (now)"), std::string::npos) << msg;
  LoaderConfig reseeded = cfg;
  reseeded.seed = 12;
  Loader other_seed(store, reseeded, Split::Train);
  msg = error_of([&] { other_seed.restore(saved); });
  EXPECT_NE(msg.find("seed 11 (saved) vs 12 (now)"), std::string::npos) << msg;
  TempDir tmp2;
  Loader other_data(make_store(tmp2, 41, 300, false, 2), cfg, Split::Train);
  msg = error_of([&] { other_data.restore(saved); });
  EXPECT_NE(msg.find("(saved)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("store.h5"), std::string::npos) << msg;
  LoaderState bad = saved;
  bad.position = a.num_samples();
  EXPECT_NE(error_of([&] { a.restore(bad); }).find("outside"), std::string::npos);
}

// World 2 with batch B: rank 0 and rank 1 rows, stacked, are the world-1 batch of 2B;
// likewise world 3. Runs past several epoch ends.
TEST(Loader, RankSlicesConcatenateToTheGlobalBatch) {
  TempDir tmp;
  const auto store = make_store(tmp, 40, 300, true);
  for (int world : {2, 3}) {
    const int64_t B = 3;
    Loader global(store, LoaderConfig{12, world * B, 77, 0.1, true}, Split::Train);
    std::vector<Loader> ranks;
    for (int r = 0; r < world; ++r) {
      ranks.emplace_back(store, LoaderConfig{12, B, 77, 0.1, true, -100, r, world}, Split::Train);
    }
    const int steps = static_cast<int>(2 * global.num_samples() / (world * B) + 2);
    for (int step = 0; step < steps; ++step) {
      const Batch g = global.next();
      for (int r = 0; r < world; ++r) {
        const Batch part = ranks[r].next();
        for (int64_t i = 0; i < B; ++i) {
          ASSERT_EQ(row(part.ids, i), row(g.ids, r * B + i)) << "world " << world << " step " << step;
          ASSERT_EQ(row(part.targets, i), row(g.targets, r * B + i)) << "world " << world << " step " << step;
        }
        EXPECT_EQ(ranks[r].state().position, global.state().position);
      }
    }
  }
}

TEST(Loader, SplitIsDisjointCoveringAndSeeded) {
  const int64_t n = 1000;
  const auto train = split_documents(n, 0.1, 5, Split::Train);
  const auto valid = split_documents(n, 0.1, 5, Split::Valid);
  EXPECT_EQ(valid.size(), 100u);
  std::vector<int64_t> all = train;
  all.insert(all.end(), valid.begin(), valid.end());
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(all[i], i);  // disjoint and covering
  EXPECT_EQ(split_documents(n, 0.1, 5, Split::Valid), valid);
  EXPECT_NE(split_documents(n, 0.1, 6, Split::Valid), valid);
  EXPECT_NE(valid.back() - valid.front(), 99);  // a random subset, not a contiguous tail
  EXPECT_EQ(split_documents(n, 1e-9, 5, Split::Valid).size(), 1u);  // at least one
  EXPECT_EQ(split_documents(n, 0.0, 5, Split::Train).size(), static_cast<size_t>(n));
  EXPECT_NE(error_of([] { split_documents(2, 0.9, 5, Split::Train); }).find("leaves none for training"),
            std::string::npos);
  EXPECT_NE(error_of([] { split_documents(10, 1.0, 5, Split::Train); }).find("not in [0, 1)"), std::string::npos);

  TempDir tmp;
  const auto store = make_store(tmp, 80, 200, false);
  Loader tl(store, LoaderConfig{4, 2, 5, 0.2, true}, Split::Train);
  Loader vl(store, LoaderConfig{4, 2, 5, 0.2, true}, Split::Valid);
  EXPECT_EQ(tl.documents(), split_documents(80, 0.2, 5, Split::Train));
  EXPECT_EQ(vl.documents(), split_documents(80, 0.2, 5, Split::Valid));
}

TEST(Loader, ConfigErrors) {
  TempDir tmp;
  write_store(tmp.file("tiny.h5"), {{1, 2, 3, 0}, {4, 5, 0}}, {}, 100);
  auto store = std::make_shared<const TokenStore>(TokenStore::open(tmp.file("tiny.h5")));
  std::string msg = error_of([&] { Loader(store, LoaderConfig{8, 1, 0, 0.0}, Split::Train); });
  EXPECT_NE(msg.find("fewer than seq_len + 1 = 9"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tiny.h5"), std::string::npos) << msg;
  msg = error_of([&] { Loader(store, LoaderConfig{2, 1, 0, 0.0}, Split::Valid); });
  EXPECT_NE(msg.find("valid_fraction > 0"), std::string::npos) << msg;
  msg = error_of([&] { Loader(store, LoaderConfig{2, 1, 0, 0.0, true, -100, 2, 2}, Split::Train); });
  EXPECT_NE(msg.find("rank 2"), std::string::npos) << msg;
  msg = error_of([&] { Loader(store, LoaderConfig{2, 1, 0, 0.0, true, 5}, Split::Train); });
  EXPECT_NE(msg.find("ignore_index 5"), std::string::npos) << msg;
  msg = error_of([&] { Loader(store, LoaderConfig{2, 1, 0, 0.5}, Split::Valid); });  // 1 doc each way
  EXPECT_EQ(msg, "(no error)");
  msg = error_of([&] { Loader(store, LoaderConfig{2, 1, 0, 0.9}, Split::Train); });
  EXPECT_NE(msg.find("leaves none for training"), std::string::npos) << msg;
}
