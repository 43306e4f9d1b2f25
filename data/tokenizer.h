// Byte-level BPE tokenizer, compatible with Hugging Face tokenizers' ByteLevel BPE
// (the GPT-2 scheme): same pre-tokenization (data/pretokenize.h), same training
// algorithm and tie-breaking as tokenizers' BpeTrainer, same merge order at encode
// time, and tokenizer.json read/write.
//
//   Tokenizer tok = Tokenizer::train(docs, 8192, 2, {"<|endoftext|>"});
//   std::vector<int32_t> ids = tok.encode("Hello world<|endoftext|>");
//   tok.save("tokenizer.json");                    // loadable by tokenizers.Tokenizer.from_file
//   Tokenizer same = Tokenizer::load("tokenizer.json");
//
// Ids: special tokens first (in the order given), then the 256 byte symbols in
// GPT-2 order, then one id per merge. A Tokenizer is immutable once built; encode
// and decode may be called from several threads at once.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace anvil {

class Tokenizer {
 public:
  // The 256 byte symbols and no merges: every byte is one token.
  Tokenizer();

  // Learns merges until the vocabulary (specials + 256 bytes + merges) has
  // `vocab_size` tokens or no pair occurs at least max(min_frequency, 1) times.
  // Each text is pre-tokenized on its own (special tokens inside texts are not
  // split out, as in tokenizers' train_from_iterator on a fresh tokenizer). Ties
  // between equally frequent pairs go to the smallest (left id, right id), exactly
  // like BpeTrainer, so the merges equal those of tokenizers trained with
  // initial_alphabet=ByteLevel.alphabet() on the same texts.
  static Tokenizer train(const std::vector<std::string>& texts, int32_t vocab_size,
                         int64_t min_frequency = 0,
                         const std::vector<std::string>& special_tokens = {});

  // Hugging Face tokenizer.json. Loading validates every field it relies on and
  // throws anvil::Error naming the file and the offending field or token.
  static Tokenizer load(const std::string& path);
  static Tokenizer from_json(const std::string& json_text, const std::string& origin = "<string>");
  void save(const std::string& path) const;  // writes to path.tmp, then renames
  std::string to_json() const;

  // Special tokens are matched verbatim (leftmost, then longest) before
  // pre-tokenization; the text between them is pre-tokenized and merged by rank.
  std::vector<int32_t> encode(std::string_view text) const;
  void encode(std::string_view text, std::vector<int32_t>& out) const;  // appends
  // Concatenates the bytes of the tokens (specials as their text). Throws for an
  // id outside [0, vocab_size()).
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string decode(const int32_t* ids, size_t count) const;

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  // Tokens are in their tokenizer.json spelling ("Ġthe" for " the").
  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string& id_to_token(int32_t id) const;  // throws when out of range
  bool is_special(int32_t id) const;
  const std::vector<std::string>& special_tokens() const { return special_contents_; }
  // Merges in rank order, as token strings.
  std::vector<std::pair<std::string, std::string>> merges() const;
  int32_t num_merges() const { return static_cast<int32_t>(merges_.size()); }
  // FNV-1a 64 of the canonical vocabulary, merges, special ids and options: equal
  // hashes mean equal encodings. Data stores record it to catch mismatches.
  uint64_t hash() const;
  // hash() as 16 hex digits: how token stores record the tokenizer they were made with.
  std::string hash_hex() const;

 private:
  struct Merge {
    int32_t left, right, result;
  };
  struct WordCache;

  // Fills the lookup tables from tokens_, merges_ and special ids; checks that
  // every byte has a token. `origin` names the source in errors.
  void finalize(const std::string& origin);
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  void merge_word(std::vector<int32_t>& symbols) const;
  static Tokenizer parse_json(const std::string& text, const std::string& origin);

  std::vector<std::string> tokens_;  // id -> token as written in tokenizer.json
  std::vector<Merge> merges_;        // rank -> merge
  std::vector<int32_t> special_ids_;
  std::vector<std::string> special_contents_;
  bool ignore_merges_ = false;  // tokenizers' BPE option: a piece that is a token wins outright

  // Derived in finalize().
  std::unordered_map<std::string, int32_t> token_ids_;
  std::vector<std::string> token_bytes_;  // id -> the bytes it decodes to
  std::vector<uint8_t> special_flag_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merge_index_;  // pair -> (rank, result)
  int32_t byte_ids_[256];
  bool special_first_byte_[256];
  std::shared_ptr<WordCache> cache_;
};

}  // namespace anvil
