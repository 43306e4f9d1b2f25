// The HDF5 token store: a tokenized corpus as one file, written by
// `anvil data prepare` and read by the loaders.
//
// File layout (format_version 1), all in the root group:
//   tokens       uint16 when vocab_size <= 65536 (every id fits in 16 bits; half the
//                size of int32), else int32. Rank 1, length num_tokens. Every document
//                already ends with EOS (prepare appends it).
//   doc_offsets  int64, rank 1, length num_documents + 1: document d is
//                tokens[doc_offsets[d], doc_offsets[d+1]); starts at 0, non-decreasing,
//                ends at num_tokens.
//   loss_mask    optional uint8 (0/1), rank 1, length num_tokens; 1 = the token counts
//                in the loss as a target. Present once any document was added with a mask;
//                documents added without one are all 1s.
//   attributes   format_version, tokenizer_hash, vocab_size, eos_id, num_documents,
//                num_tokens, source.
// Datasets are chunked (with HDF5's Fletcher-32 checksum per chunk, so a damaged chunk
// fails to read instead of yielding wrong ids) and extendible, so the writer holds at most a few MB in RAM
// whatever the corpus size. The reader loads everything into memory (2 or 4 bytes a
// token plus 1 for a mask): fine up to a few GB of tokens; larger corpora want a
// memory-mapped or streamed reader (not written yet).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace anvil {

struct TokenStoreInfo {
  std::string tokenizer_hash;  // identifies the tokenizer that made the ids
  int64_t vocab_size = 0;      // every id is in [0, vocab_size)
  int32_t eos_id = -1;         // the id prepare appended after each document
  std::string source;          // free-form description of the inputs
};

// Writes a store to `path + ".tmp"` and renames it to `path` in finish(), so a killed
// prepare never leaves a file that looks complete. Destroying a writer without
// finish() removes the temp file.
class TokenStoreWriter {
 public:
  static constexpr int64_t kTokenChunk = int64_t(1) << 18;   // HDF5 chunk, elements
  static constexpr int64_t kOffsetChunk = int64_t(1) << 14;

  TokenStoreWriter(const std::string& path, const TokenStoreInfo& info);
  ~TokenStoreWriter();
  TokenStoreWriter(const TokenStoreWriter&) = delete;
  TokenStoreWriter& operator=(const TokenStoreWriter&) = delete;

  // Appends one document (ids must be in [0, vocab_size)). `loss_mask`, when given,
  // has one 0/1 entry per token; without it every token counts in the loss.
  void add_document(const std::vector<int32_t>& tokens, const std::vector<uint8_t>* loss_mask = nullptr);
  void finish();  // flushes, writes the attributes, closes and renames

  int64_t num_documents() const;
  int64_t num_tokens() const;
  const std::string& path() const;
  std::string temp_path() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class TokenStore {
 public:
  static constexpr int64_t kFormatVersion = 1;

  // Opens and validates the whole file (see the layout above); any problem is an
  // anvil::Error naming the file and what is wrong.
  static TokenStore open(const std::string& path);
  // The same, shared: what Loader takes, so train and valid loaders share one copy.
  static std::shared_ptr<const TokenStore> open_shared(const std::string& path);

  // Move-only: a store can hold gigabytes, so copies are never implicit.
  TokenStore(TokenStore&&) = default;
  TokenStore& operator=(TokenStore&&) = default;
  TokenStore(const TokenStore&) = delete;
  TokenStore& operator=(const TokenStore&) = delete;

  // Refuses a store made with another tokenizer (names both hashes and the fix).
  void check_tokenizer(const std::string& tokenizer_hash) const;

  const std::string& path() const { return path_; }
  const TokenStoreInfo& info() const { return info_; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_documents() const { return static_cast<int64_t>(offsets_.size()) - 1; }
  const std::vector<int64_t>& doc_offsets() const { return offsets_; }
  int token_bytes() const { return token_bytes_; }  // 2 (uint16 ids) or 4 (int32 ids), file and RAM
  size_t memory_bytes() const;

  int32_t token(int64_t i) const { return token_bytes_ == 2 ? tokens16_[i] : tokens32_[i]; }
  void copy_tokens(int64_t begin, int64_t count, int32_t* out) const;
  bool has_loss_mask() const { return has_mask_; }
  const uint8_t* loss_mask() const { return has_mask_ ? mask_.data() : nullptr; }  // null: all 1

  std::vector<int32_t> document(int64_t d) const;
  std::vector<uint8_t> document_mask(int64_t d) const;  // all 1s when the store has no mask

 private:
  TokenStore() = default;
  std::string path_;
  TokenStoreInfo info_;
  int64_t num_tokens_ = 0;
  int token_bytes_ = 4;
  std::vector<uint16_t> tokens16_;  // exactly one of these holds the tokens
  std::vector<int32_t> tokens32_;
  std::vector<int64_t> offsets_;
  bool has_mask_ = false;
  std::vector<uint8_t> mask_;
};

}  // namespace anvil
