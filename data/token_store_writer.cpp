// TokenStoreWriter: buffers tokens in RAM and appends them to chunked, extendible
// datasets in whole chunks, so memory stays bounded for any corpus size.
#include <algorithm>
#include <filesystem>
#include <system_error>

#include "data/hdf5_util.h"
#include "data/token_store.h"

namespace anvil {

namespace {
// Flush once this many tokens are buffered (a whole number of HDF5 chunks).
constexpr int64_t kFlushTokens = 4 * TokenStoreWriter::kTokenChunk;
constexpr int64_t kFlushOffsets = TokenStoreWriter::kOffsetChunk;

h5::Id create_extendible(const h5::Context& ctx, hid_t file, const char* name, hid_t file_type,
                         int64_t chunk) {
  const hsize_t dims[1] = {0}, maxdims[1] = {H5S_UNLIMITED}, chunk_dims[1] = {hsize_t(chunk)};
  const std::string what = std::string("creating dataset '") + name + "'";
  h5::Id space(ctx.check(H5Screate_simple(1, dims, maxdims), what), H5Sclose);
  h5::Id dcpl(ctx.check(H5Pcreate(H5P_DATASET_CREATE), what), H5Pclose);
  ctx.check_status(H5Pset_chunk(dcpl.get(), 1, chunk_dims), what);
  ctx.check_status(H5Pset_fletcher32(dcpl.get()), what);  // per-chunk checksum: bit rot fails the read
  return h5::Id(ctx.check(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(),
                                     H5P_DEFAULT),
                          what),
                H5Dclose);
}

// Writes n elements at [offset, offset + n), growing the dataset to offset + n.
void append(const h5::Context& ctx, const h5::Id& ds, const char* name, hid_t mem_type,
            const void* data, int64_t offset, int64_t n) {
  if (n == 0) return;
  const std::string what = std::string("appending to dataset '") + name + "'";
  const hsize_t new_size[1] = {hsize_t(offset + n)}, start[1] = {hsize_t(offset)}, count[1] = {hsize_t(n)};
  ctx.check_status(H5Dset_extent(ds.get(), new_size), what);
  h5::Id fspace(ctx.check(H5Dget_space(ds.get()), what), H5Sclose);
  ctx.check_status(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr), what);
  h5::Id mspace(ctx.check(H5Screate_simple(1, count, nullptr), what), H5Sclose);
  ctx.check_status(H5Dwrite(ds.get(), mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, data), what);
}
}  // namespace

struct TokenStoreWriter::Impl {
  std::string path, tmp;
  TokenStoreInfo info;
  h5::Context ctx;
  bool u16 = false;
  h5::Id file, tokens, offsets, mask;
  std::vector<int32_t> tok_buf;
  std::vector<uint8_t> mask_buf;  // mirrors tok_buf once the mask dataset exists
  std::vector<int64_t> off_buf;
  std::vector<uint16_t> narrow;   // scratch for uint16 writes
  int64_t tokens_flushed = 0, offsets_flushed = 0, num_docs = 0, num_tokens = 0;
  bool finished = false;

  void flush_tokens(bool all) {
    const int64_t buffered = static_cast<int64_t>(tok_buf.size());
    const int64_t n = all ? buffered : buffered / kTokenChunk * kTokenChunk;
    if (n == 0) return;
    if (u16) {
      narrow.resize(n);
      for (int64_t i = 0; i < n; ++i) narrow[i] = static_cast<uint16_t>(tok_buf[i]);
      append(ctx, tokens, "tokens", H5T_NATIVE_UINT16, narrow.data(), tokens_flushed, n);
    } else {
      append(ctx, tokens, "tokens", H5T_NATIVE_INT32, tok_buf.data(), tokens_flushed, n);
    }
    if (mask.valid()) {
      append(ctx, mask, "loss_mask", H5T_NATIVE_UINT8, mask_buf.data(), tokens_flushed, n);
      mask_buf.erase(mask_buf.begin(), mask_buf.begin() + n);
    }
    tok_buf.erase(tok_buf.begin(), tok_buf.begin() + n);
    tokens_flushed += n;
  }

  void flush_offsets(bool all) {
    const int64_t buffered = static_cast<int64_t>(off_buf.size());
    const int64_t n = all ? buffered : buffered / kOffsetChunk * kOffsetChunk;
    if (n == 0) return;
    append(ctx, offsets, "doc_offsets", H5T_NATIVE_INT64, off_buf.data(), offsets_flushed, n);
    off_buf.erase(off_buf.begin(), off_buf.begin() + n);
    offsets_flushed += n;
  }

  // The first masked document: create loss_mask and mark every earlier token as counted.
  void start_mask() {
    mask = create_extendible(ctx, file.get(), "loss_mask", H5T_STD_U8LE, kTokenChunk);
    const std::vector<uint8_t> ones(std::min<int64_t>(std::max<int64_t>(tokens_flushed, 1), kFlushTokens), 1);
    for (int64_t done = 0; done < tokens_flushed;) {
      const int64_t n = std::min<int64_t>(ones.size(), tokens_flushed - done);
      append(ctx, mask, "loss_mask", H5T_NATIVE_UINT8, ones.data(), done, n);
      done += n;
    }
    mask_buf.assign(tok_buf.size(), 1);
  }

  void discard() noexcept {
    mask.reset();
    offsets.reset();
    tokens.reset();
    file.reset();
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
  }
};

TokenStoreWriter::TokenStoreWriter(const std::string& path, const TokenStoreInfo& info)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = path;
  m.tmp = path + ".tmp";
  m.info = info;
  m.ctx = h5::Context{"token store", path,
                      "check that the output directory exists and is writable and the disk has space"};
  ANVIL_CHECK(!path.empty(), "token store: empty output path — give the file to write, e.g. data/train.h5");
  ANVIL_CHECK(info.vocab_size > 0 && info.vocab_size <= (int64_t(1) << 31),
              "token store '", path, "': vocab_size ", info.vocab_size,
              " is not in [1, 2^31] — pass the tokenizer's vocabulary size");
  ANVIL_CHECK(info.eos_id >= 0 && info.eos_id < info.vocab_size, "token store '", path, "': eos_id ",
              info.eos_id, " is outside the vocabulary [0, ", info.vocab_size,
              ") — pass the tokenizer's end-of-text id");
  ANVIL_CHECK(!info.tokenizer_hash.empty(), "token store '", path,
              "': empty tokenizer hash — pass the tokenizer's hash so loaders can check it");
  m.u16 = info.vocab_size <= 65536;

  h5::Quiet quiet;
  m.file = h5::Id(m.ctx.check(H5Fcreate(m.tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                              "creating temporary file '" + m.tmp + "'"),
                  H5Fclose);
  try {
    m.tokens = create_extendible(m.ctx, m.file.get(), "tokens", m.u16 ? H5T_STD_U16LE : H5T_STD_I32LE,
                                 kTokenChunk);
    m.offsets = create_extendible(m.ctx, m.file.get(), "doc_offsets", H5T_STD_I64LE, kOffsetChunk);
  } catch (...) {
    m.discard();
    throw;
  }
  m.off_buf.push_back(0);
}

TokenStoreWriter::~TokenStoreWriter() {
  if (impl_ && !impl_->finished) {
    h5::Quiet quiet;
    impl_->discard();
  }
}

void TokenStoreWriter::add_document(const std::vector<int32_t>& tokens, const std::vector<uint8_t>* loss_mask) {
  Impl& m = *impl_;
  ANVIL_CHECK(!m.finished, "token store '", m.path,
              "': add_document after finish() — create a new writer for another store");
  const int64_t doc = m.num_docs;
  for (size_t i = 0; i < tokens.size(); ++i) {
    ANVIL_CHECK(tokens[i] >= 0 && tokens[i] < m.info.vocab_size, "token store '", m.path, "': document ",
                doc, " has token id ", tokens[i], " at position ", i, ", outside the vocabulary [0, ",
                m.info.vocab_size, ") — check that vocab_size matches the tokenizer that made the ids");
  }
  if (loss_mask) {
    ANVIL_CHECK(loss_mask->size() == tokens.size(), "token store '", m.path, "': document ", doc, " has ",
                tokens.size(), " tokens but a loss mask of ", loss_mask->size(),
                " — give one mask entry per token");
    for (size_t i = 0; i < loss_mask->size(); ++i) {
      ANVIL_CHECK((*loss_mask)[i] <= 1, "token store '", m.path, "': document ", doc, " has loss-mask value ",
                  int((*loss_mask)[i]), " at position ", i, " — mask entries are 0 (ignored) or 1 (counted)");
    }
  }
  h5::Quiet quiet;
  if (loss_mask && !m.mask.valid()) m.start_mask();
  m.tok_buf.insert(m.tok_buf.end(), tokens.begin(), tokens.end());
  if (m.mask.valid()) {
    if (loss_mask) {
      m.mask_buf.insert(m.mask_buf.end(), loss_mask->begin(), loss_mask->end());
    } else {
      m.mask_buf.insert(m.mask_buf.end(), tokens.size(), 1);
    }
  }
  m.num_tokens += static_cast<int64_t>(tokens.size());
  m.num_docs += 1;
  m.off_buf.push_back(m.num_tokens);
  if (static_cast<int64_t>(m.tok_buf.size()) >= kFlushTokens) m.flush_tokens(false);
  if (static_cast<int64_t>(m.off_buf.size()) >= kFlushOffsets) m.flush_offsets(false);
}

void TokenStoreWriter::finish() {
  Impl& m = *impl_;
  ANVIL_CHECK(!m.finished, "token store '", m.path, "': finish() called twice — call it once per writer");
  h5::Quiet quiet;
  m.flush_tokens(true);
  m.flush_offsets(true);
  const hid_t root = m.file.get();
  h5::write_attr_int(m.ctx, root, "format_version", TokenStore::kFormatVersion);
  h5::write_attr_string(m.ctx, root, "tokenizer_hash", m.info.tokenizer_hash);
  h5::write_attr_int(m.ctx, root, "vocab_size", m.info.vocab_size);
  h5::write_attr_int(m.ctx, root, "eos_id", m.info.eos_id);
  h5::write_attr_int(m.ctx, root, "num_documents", m.num_docs);
  h5::write_attr_int(m.ctx, root, "num_tokens", m.num_tokens);
  h5::write_attr_string(m.ctx, root, "source", m.info.source);
  const bool closed = m.mask.close() & m.offsets.close() & m.tokens.close();
  if (!closed || !m.file.close()) m.ctx.fail_h5("closing temporary file '" + m.tmp + "'");
  std::error_code ec;
  std::filesystem::rename(m.tmp, m.path, ec);
  if (ec) m.ctx.fail("renaming '" + m.tmp + "' to the final name failed (" + ec.message() + ")");
  m.finished = true;
}

int64_t TokenStoreWriter::num_documents() const { return impl_->num_docs; }
int64_t TokenStoreWriter::num_tokens() const { return impl_->num_tokens; }
const std::string& TokenStoreWriter::path() const { return impl_->path; }
std::string TokenStoreWriter::temp_path() const { return impl_->tmp; }

}  // namespace anvil
