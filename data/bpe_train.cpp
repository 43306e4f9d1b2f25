// Tokenizer::train: byte-level BPE training, step for step the algorithm of
// tokenizers' BpeTrainer (tokenizers/src/models/bpe/trainer.rs), so that both
// learn the same merges from the same texts:
//  - ids: special tokens, then the 256 byte symbols ordered by code point, then
//    one id per merge (a merge whose string already exists reuses that id);
//  - words are the pre-tokenized pieces with their counts; pair counts are kept
//    incrementally, with a pair -> words index for the words to touch;
//  - a max-heap of (count, pair, words) entries: the highest count wins and ties
//    go to the smallest (left id, right id). An entry whose count is stale is
//    refreshed and pushed back; pairs created by a merge are pushed with the words
//    they appeared in. The merged pair's own count is left as is, like tokenizers.
#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "data/pretokenize.h"
#include "data/tokenizer.h"

namespace anvil {

namespace {

inline uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}
inline int32_t pair_left(uint64_t key) { return static_cast<int32_t>(key >> 32); }
inline int32_t pair_right(uint64_t key) { return static_cast<int32_t>(key & 0xFFFFFFFFu); }

struct PairHash {
  size_t operator()(uint64_t k) const {  // splitmix64 finalizer: ids are small and dense
    k ^= k >> 30;
    k *= 0xbf58476d1ce4e5b9ull;
    k ^= k >> 27;
    k *= 0x94d049bb133111ebull;
    return static_cast<size_t>(k ^ (k >> 31));
  }
};

struct HeapEntry {
  int64_t count;
  uint64_t pair;
  std::vector<uint32_t> words;  // indices of the words to merge in (a set)
};
// std heap order: `a` below `b` when it has a lower count or, on a tie, a larger pair.
inline bool heap_less(const HeapEntry& a, const HeapEntry& b) {
  return a.count != b.count ? a.count < b.count : a.pair > b.pair;
}

// tokenizers' Word::merge: replaces every non-overlapping (left, right), left to
// right, and reports the pair changes (-1 for destroyed neighbour pairs, +1 for new
// ones; the merged pair itself is not reported).
template <class OnChange>
void merge_in_word(std::vector<int32_t>& w, int32_t left, int32_t right, int32_t result, OnChange&& change) {
  const size_t n = w.size();
  size_t out = 0;
  for (size_t r = 0; r < n;) {
    if (w[r] == left && r + 1 < n && w[r + 1] == right) {
      if (out > 0) {
        change(pair_key(w[out - 1], left), -1);
        change(pair_key(w[out - 1], result), +1);
      }
      w[out++] = result;
      r += 2;
      if (r < n) {
        change(pair_key(right, w[r]), -1);
        change(pair_key(result, w[r]), +1);
      }
    } else {
      w[out++] = w[r++];
    }
  }
  w.resize(out);
}

}  // namespace

Tokenizer Tokenizer::train(const std::vector<std::string>& texts, int32_t vocab_size, int64_t min_frequency,
                           const std::vector<std::string>& special_tokens) {
  ANVIL_CHECK(min_frequency >= 0, "Tokenizer::train: min_frequency is ", min_frequency,
              " — use 0 or more (a pair is merged only if it occurs at least that often)");
  std::unordered_set<std::string> seen_specials;
  for (const std::string& s : special_tokens) {
    ANVIL_CHECK(!s.empty(), "Tokenizer::train: special_tokens contains an empty string — remove it");
    ANVIL_CHECK(detail::is_valid_utf8(s), "Tokenizer::train: special token '", s,
                "' is not valid UTF-8 — tokenizer.json can only hold UTF-8 text");
    ANVIL_CHECK(seen_specials.insert(s).second, "Tokenizer::train: special token '", s,
                "' is listed twice — list each special token once");
  }
  const int64_t base = static_cast<int64_t>(special_tokens.size()) + 256;
  ANVIL_CHECK(vocab_size >= base, "Tokenizer::train: vocab_size ", vocab_size, " is smaller than the ",
              special_tokens.size(), " special tokens + 256 byte symbols = ", base,
              " every byte-level vocabulary holds — ask for at least ", base);

  // 1. Vocabulary: specials, then the byte alphabet (skipping strings already present).
  std::vector<std::string> id_to_word;
  std::unordered_map<std::string, int32_t> word_to_id;
  auto add_token = [&](const std::string& s) {
    const auto [it, inserted] = word_to_id.emplace(s, static_cast<int32_t>(id_to_word.size()));
    if (inserted) id_to_word.push_back(s);
    return it->second;
  };
  std::vector<int32_t> special_ids;
  for (const std::string& s : special_tokens) special_ids.push_back(add_token(s));
  const Tokenizer bytes_only;  // the 256 byte symbols in code-point order
  for (const std::string& t : bytes_only.tokens_) add_token(t);
  int32_t byte_id[256];
  for (int b = 0; b < 256; ++b) byte_id[b] = word_to_id.at(byte_level_alphabet()[b]);

  // 2. Word counts over the pre-tokenized texts.
  std::unordered_map<std::string, int64_t> word_counts;
  {
    std::vector<std::string_view> pieces;
    for (const std::string& text : texts) {
      pieces.clear();
      pretokenize(text, pieces);
      for (std::string_view p : pieces) ++word_counts[std::string(p)];
    }
  }
  std::vector<std::pair<std::string, int64_t>> sorted(word_counts.begin(), word_counts.end());
  word_counts.clear();
  std::sort(sorted.begin(), sorted.end());  // only for a reproducible word order
  std::vector<std::vector<int32_t>> words(sorted.size());
  std::vector<int64_t> counts(sorted.size());
  for (size_t i = 0; i < sorted.size(); ++i) {
    for (char ch : sorted[i].first) words[i].push_back(byte_id[static_cast<unsigned char>(ch)]);
    counts[i] = sorted[i].second;
  }
  sorted.clear();

  // 3. Pair counts and the pair -> words index.
  std::unordered_map<uint64_t, int64_t, PairHash> pair_counts;
  std::unordered_map<uint64_t, std::vector<uint32_t>, PairHash> where;
  for (uint32_t i = 0; i < words.size(); ++i) {
    const std::vector<int32_t>& w = words[i];
    for (size_t k = 0; k + 1 < w.size(); ++k) {
      const uint64_t p = pair_key(w[k], w[k + 1]);
      pair_counts[p] += counts[i];
      std::vector<uint32_t>& pos = where[p];
      if (pos.empty() || pos.back() != i) pos.push_back(i);
    }
  }
  std::vector<HeapEntry> heap;
  auto drain_where = [&] {
    for (auto& [pair, pos] : where) {
      const int64_t count = pair_counts[pair];
      if (count > 0) {
        heap.push_back({count, pair, std::move(pos)});
        std::push_heap(heap.begin(), heap.end(), heap_less);
      }
    }
    where.clear();
  };
  drain_where();

  // 4. Merges.
  std::vector<Merge> merges;
  while (static_cast<int64_t>(word_to_id.size()) < vocab_size && !heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), heap_less);
    HeapEntry top = std::move(heap.back());
    heap.pop_back();
    const int64_t current = pair_counts[top.pair];
    if (top.count != current) {  // stale: requeue with the true count
      top.count = current;
      heap.push_back(std::move(top));
      std::push_heap(heap.begin(), heap.end(), heap_less);
      continue;
    }
    if (top.count < 1 || min_frequency > top.count) break;

    const int32_t left = pair_left(top.pair), right = pair_right(top.pair);
    const int32_t result = add_token(id_to_word[left] + id_to_word[right]);
    merges.push_back({left, right, result});
    for (uint32_t wi : top.words) {
      const int64_t count = counts[wi];
      merge_in_word(words[wi], left, right, result, [&](uint64_t pair, int delta) {
        pair_counts[pair] += delta * count;
        if (delta > 0) {
          std::vector<uint32_t>& pos = where[pair];
          if (pos.empty() || pos.back() != wi) pos.push_back(wi);
        }
      });
    }
    drain_where();
  }

  Tokenizer tok;
  tok.tokens_ = std::move(id_to_word);
  tok.merges_ = std::move(merges);
  tok.special_ids_ = std::move(special_ids);
  tok.ignore_merges_ = false;
  tok.finalize("Tokenizer::train");
  return tok;
}

}  // namespace anvil
