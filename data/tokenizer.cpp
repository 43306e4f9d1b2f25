// Tokenizer: construction of the lookup tables, encode (special-token split,
// pre-tokenization, rank-ordered merges with a word cache), decode and hash.
// Training lives in data/bpe_train.cpp, tokenizer.json in data/tokenizer_json.cpp.
#include "data/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <mutex>

#include "core/error.h"
#include "data/pretokenize.h"

namespace anvil {

namespace {

inline uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

std::string hex_byte(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02X", b);
  return buf;
}

// Words longer than this (in bytes) are not cached, like tokenizers' BPE cache.
constexpr size_t kMaxCachedPiece = 256;
constexpr size_t kMaxCacheEntries = size_t(1) << 20;

}  // namespace

// Piece bytes -> ids, shared by copies of a Tokenizer (they encode identically).
struct Tokenizer::WordCache {
  std::mutex mutex;
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>> index;  // -> (offset, count)
  std::vector<int32_t> ids;
};

Tokenizer::Tokenizer() {
  // The 256 byte symbols in the order of their code points, as tokenizers'
  // BpeTrainer orders its alphabet (the order of GPT-2's vocabulary too).
  std::vector<std::string> alphabet(byte_level_alphabet().begin(), byte_level_alphabet().end());
  auto code_point = [](const std::string& s) { return detail::decode_utf8(s, 0).cp; };
  std::sort(alphabet.begin(), alphabet.end(),
            [&](const std::string& a, const std::string& b) { return code_point(a) < code_point(b); });
  tokens_ = std::move(alphabet);
  finalize("Tokenizer()");
}

void Tokenizer::finalize(const std::string& origin) {
  token_ids_.clear();
  token_ids_.reserve(tokens_.size() * 2);
  for (size_t id = 0; id < tokens_.size(); ++id) {
    const auto [it, inserted] = token_ids_.emplace(tokens_[id], static_cast<int32_t>(id));
    ANVIL_CHECK(inserted, origin, ": token '", tokens_[id], "' has two ids, ", it->second, " and ", id,
                " — every token must appear once in the vocabulary");
  }
  special_flag_.assign(tokens_.size(), 0);
  std::fill(std::begin(special_first_byte_), std::end(special_first_byte_), false);
  special_contents_.clear();
  for (int32_t id : special_ids_) {
    ANVIL_CHECK(id >= 0 && id < vocab_size(), origin, ": special token id ", id, " is outside the vocabulary of ",
                vocab_size(), " tokens");
    ANVIL_CHECK(!tokens_[id].empty(), origin, ": special token ", id, " is empty — give it some text");
    special_flag_[id] = 1;
    special_contents_.push_back(tokens_[id]);
    special_first_byte_[static_cast<unsigned char>(tokens_[id][0])] = true;
  }
  token_bytes_.assign(tokens_.size(), std::string());
  for (size_t id = 0; id < tokens_.size(); ++id) {
    if (special_flag_[id]) token_bytes_[id] = tokens_[id];
    else byte_level_to_bytes(tokens_[id], token_bytes_[id]);
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = token_ids_.find(byte_level_alphabet()[b]);
    byte_ids_[b] = it == token_ids_.end() ? -1 : it->second;
  }
  merge_index_.clear();
  merge_index_.reserve(merges_.size() * 2);
  for (size_t rank = 0; rank < merges_.size(); ++rank) {
    const Merge& m = merges_[rank];
    // A repeated pair keeps its last rank, as in tokenizers' merge map.
    merge_index_[pair_key(m.left, m.right)] = {static_cast<int32_t>(rank), m.result};
  }
  cache_ = std::make_shared<WordCache>();
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  const auto it = token_ids_.find(std::string(token));
  if (it == token_ids_.end()) return std::nullopt;
  return it->second;
}

const std::string& Tokenizer::id_to_token(int32_t id) const {
  ANVIL_CHECK(id >= 0 && id < vocab_size(), "Tokenizer::id_to_token: id ", id,
              " is out of range for a vocabulary of ", vocab_size(), " tokens — valid ids are 0..",
              vocab_size() - 1);
  return tokens_[id];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && special_flag_[id] != 0;
}

std::vector<std::pair<std::string, std::string>> Tokenizer::merges() const {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges_.size());
  for (const Merge& m : merges_) out.emplace_back(tokens_[m.left], tokens_[m.right]);
  return out;
}

// tokenizers' Word::merge_all: a min-heap of (rank, position) candidates over a
// linked list of symbols; the lowest rank merges first, the leftmost on ties.
void Tokenizer::merge_word(std::vector<int32_t>& symbols) const {
  const int32_t n = static_cast<int32_t>(symbols.size());
  if (n < 2 || merge_index_.empty()) return;
  struct Sym {
    int32_t id, prev, next;
    bool alive;
  };
  struct Candidate {
    int32_t rank, pos, result;
  };
  auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::vector<Sym> syms(n);
  for (int32_t i = 0; i < n; ++i) syms[i] = {symbols[i], i - 1, i + 1 < n ? i + 1 : -1, true};
  std::vector<Candidate> heap;
  heap.reserve(n);
  auto push = [&](int32_t pos, int32_t left, int32_t right) {
    const auto it = merge_index_.find(pair_key(left, right));
    if (it == merge_index_.end()) return;
    heap.push_back({it->second.first, pos, it->second.second});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i, symbols[i], symbols[i + 1]);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    Sym& s = syms[top.pos];
    if (!s.alive || s.next < 0) continue;
    Sym& right = syms[s.next];
    const auto it = merge_index_.find(pair_key(s.id, right.id));
    if (it == merge_index_.end() || it->second.second != top.result) continue;  // stale
    s.id = top.result;
    right.alive = false;
    s.next = right.next;
    if (s.next >= 0) syms[s.next].prev = top.pos;
    if (s.prev >= 0) push(s.prev, syms[s.prev].id, s.id);
    if (s.next >= 0) push(top.pos, s.id, syms[s.next].id);
  }
  symbols.clear();
  for (const Sym& s : syms)
    if (s.alive) symbols.push_back(s.id);
}

void Tokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  const bool cacheable = piece.size() <= kMaxCachedPiece;
  std::string key;
  if (cacheable) {
    key.assign(piece);
    std::lock_guard<std::mutex> lock(cache_->mutex);
    const auto it = cache_->index.find(key);
    if (it != cache_->index.end()) {
      const int32_t* p = cache_->ids.data() + it->second.first;
      out.insert(out.end(), p, p + it->second.second);
      return;
    }
  }
  std::vector<int32_t> symbols;
  symbols.reserve(piece.size());
  for (char ch : piece) {
    const auto b = static_cast<unsigned char>(ch);
    ANVIL_CHECK(byte_ids_[b] >= 0, "Tokenizer::encode: byte ", hex_byte(b), " (token '",
                byte_level_alphabet()[b], "') has no id in this vocabulary of ", vocab_size(),
                " tokens, so text containing it cannot be encoded — train the tokenizer with all 256 "
                "byte symbols (anvil always does; in tokenizers pass "
                "initial_alphabet=pre_tokenizers.ByteLevel.alphabet())");
    symbols.push_back(byte_ids_[b]);
  }
  bool whole = false;
  if (ignore_merges_) {
    const auto it = token_ids_.find(bytes_to_byte_level(piece));
    if (it != token_ids_.end()) symbols.assign(1, it->second), whole = true;
  }
  if (!whole) merge_word(symbols);
  out.insert(out.end(), symbols.begin(), symbols.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->index.size() >= kMaxCacheEntries) cache_->index.clear(), cache_->ids.clear();
    cache_->index.emplace(std::move(key), std::make_pair(static_cast<uint32_t>(cache_->ids.size()),
                                                         static_cast<uint32_t>(symbols.size())));
    cache_->ids.insert(cache_->ids.end(), symbols.begin(), symbols.end());
  }
}

void Tokenizer::encode(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<std::string_view> pieces;
  auto encode_segment = [&](std::string_view segment) {
    pieces.clear();
    pretokenize(segment, pieces);
    for (std::string_view p : pieces) encode_piece(p, out);
  };
  if (special_ids_.empty()) {
    encode_segment(text);
    return;
  }
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    if (special_first_byte_[static_cast<unsigned char>(text[i])]) {
      int32_t best = -1;
      size_t best_len = 0;
      for (size_t k = 0; k < special_ids_.size(); ++k) {
        const std::string& s = special_contents_[k];
        if (s.size() > best_len && text.compare(i, s.size(), s) == 0) best = special_ids_[k], best_len = s.size();
      }
      if (best >= 0) {
        encode_segment(text.substr(start, i - start));
        out.push_back(best);
        i += best_len;
        start = i;
        continue;
      }
    }
    ++i;
  }
  encode_segment(text.substr(start));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  encode(text, out);
  return out;
}

std::string Tokenizer::decode(const int32_t* ids, size_t count) const {
  std::string out;
  out.reserve(count * 4);
  for (size_t i = 0; i < count; ++i) {
    const int32_t id = ids[i];
    ANVIL_CHECK(id >= 0 && id < vocab_size(), "Tokenizer::decode: token id ", id, " at position ", i,
                " is out of range for a vocabulary of ", vocab_size(), " tokens (valid ids: 0..",
                vocab_size() - 1, ") — were these ids made by another tokenizer? Compare Tokenizer::hash()");
    out += token_bytes_[id];
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const { return decode(ids.data(), ids.size()); }

uint64_t Tokenizer::hash() const {
  uint64_t h = 0xcbf29ce484222325ull;
  auto bytes = [&](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  };
  auto u32 = [&](uint32_t v) {
    const unsigned char le[4] = {static_cast<unsigned char>(v), static_cast<unsigned char>(v >> 8),
                                 static_cast<unsigned char>(v >> 16), static_cast<unsigned char>(v >> 24)};
    bytes(le, 4);
  };
  const std::string tag = "anvil byte-level BPE v1";
  bytes(tag.data(), tag.size());
  u32(static_cast<uint32_t>(tokens_.size()));
  for (const std::string& t : tokens_) u32(static_cast<uint32_t>(t.size())), bytes(t.data(), t.size());
  u32(static_cast<uint32_t>(merges_.size()));
  for (const Merge& m : merges_) u32(static_cast<uint32_t>(m.left)), u32(static_cast<uint32_t>(m.right));
  u32(static_cast<uint32_t>(special_ids_.size()));
  for (int32_t id : special_ids_) u32(static_cast<uint32_t>(id));
  u32(ignore_merges_ ? 1u : 0u);
  return h;
}

std::string Tokenizer::hash_hex() const {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(hash()));
  return buf;
}

}  // namespace anvil
