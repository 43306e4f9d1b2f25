// TokenStore::open: validates every part of the file before anything uses it.
#include "data/token_store.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <system_error>

#include "core/error.h"
#include "data/hdf5_util.h"

namespace anvil {

namespace {
constexpr const char* kRecreate =
    "the file is damaged or was not written by `anvil data prepare`; re-create it with `anvil data prepare`";
constexpr int64_t kReadChunk = int64_t(1) << 20;  // elements per read while loading

std::string type_name(hid_t type) {
  const H5T_class_t cls = H5Tget_class(type);
  const size_t size = H5Tget_size(type);
  if (cls == H5T_INTEGER) {
    const bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
    return std::string(is_signed ? "int" : "uint") + std::to_string(8 * size);
  }
  if (cls == H5T_FLOAT) return "float" + std::to_string(8 * size);
  if (cls == H5T_STRING) return "string";
  return "a non-integer type";
}

struct Dataset {
  h5::Id id;
  int64_t length = 0;
  std::string type;  // e.g. "uint16"
};

// Opens a rank-1 dataset whose element type is one of `allowed` (e.g. {"uint16", "int32"}).
Dataset open_dataset(const h5::Context& ctx, hid_t file, const char* name,
                     std::initializer_list<const char*> allowed, int64_t file_bytes) {
  const std::string quoted = std::string("dataset '") + name + "'";
  const htri_t exists = H5Lexists(file, name, H5P_DEFAULT);
  if (exists < 0) ctx.fail_h5("looking up " + quoted);
  if (exists == 0) ctx.fail(quoted + " is missing");
  Dataset d;
  d.id = h5::Id(ctx.check(H5Dopen2(file, name, H5P_DEFAULT), "opening " + quoted + " (is it a dataset?)"),
                H5Dclose);
  h5::Id space(ctx.check(H5Dget_space(d.id.get()), "reading the shape of " + quoted), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank != 1) ctx.fail(quoted + " has rank " + std::to_string(rank) + "; expected 1");
  hsize_t dims[1] = {0};
  ctx.check_status(H5Sget_simple_extent_dims(space.get(), dims, nullptr), "reading the shape of " + quoted);
  d.length = static_cast<int64_t>(dims[0]);
  h5::Id type(ctx.check(H5Dget_type(d.id.get()), "reading the type of " + quoted), H5Tclose);
  // A damaged header can claim any size; refuse before allocating for it.
  if (d.length > file_bytes / std::max<int64_t>(1, H5Tget_size(type.get()))) {
    ctx.fail(quoted + " claims " + std::to_string(d.length) + " entries, more than the " +
             std::to_string(file_bytes) + "-byte file can hold");
  }
  d.type = type_name(type.get());
  std::string expected;
  for (const char* a : allowed) {
    if (d.type == a) return d;
    expected += (expected.empty() ? "" : " or ") + std::string(a);
  }
  ctx.fail(quoted + " has element type " + d.type + "; expected " + expected);
}

// Reads a whole rank-1 dataset in pieces; `check(first, n)` validates each piece as it lands.
template <class T>
void read_all(const h5::Context& ctx, const Dataset& d, const char* name, hid_t mem_type, std::vector<T>& out,
              const std::function<void(int64_t, int64_t)>& check) {
  out.resize(d.length);
  const std::string what = std::string("reading dataset '") + name + "'";
  h5::Id fspace(ctx.check(H5Dget_space(d.id.get()), what), H5Sclose);
  for (int64_t first = 0; first < d.length; first += kReadChunk) {
    const int64_t n = std::min(kReadChunk, d.length - first);
    const hsize_t start[1] = {hsize_t(first)}, count[1] = {hsize_t(n)};
    ctx.check_status(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr), what);
    h5::Id mspace(ctx.check(H5Screate_simple(1, count, nullptr), what), H5Sclose);
    ctx.check_status(H5Dread(d.id.get(), mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, out.data() + first),
                     what + " at elements [" + std::to_string(first) + ", " + std::to_string(first + n) + ")");
    if (check) check(first, n);
  }
}
}  // namespace

TokenStore TokenStore::open(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    if (std::filesystem::exists(path + ".tmp", ec)) {
      ANVIL_FAIL("token store '", path, "' does not exist, but '", path,
                 ".tmp' does: the prepare that wrote it did not finish — re-run `anvil data prepare`");
    }
    ANVIL_FAIL("token store '", path,
               "' does not exist — fix the path, or create the store with `anvil data prepare`");
  }
  ANVIL_CHECK(std::filesystem::is_regular_file(path, ec), "token store '", path,
              "' is not a regular file — point the path at the .h5 file written by `anvil data prepare`");
  const h5::Context ctx{"token store", path, kRecreate};
  h5::Quiet quiet;
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 < 0) ctx.fail_h5("cannot read the file");
  if (is_hdf5 == 0) {
    ANVIL_FAIL("token store '", path, "' is not an HDF5 file (no HDF5 signature) — point the path at the "
               ".h5 file written by `anvil data prepare`, or re-create it");
  }
  const int64_t file_bytes = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  h5::Id file(ctx.check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "cannot open the file"), H5Fclose);
  const hid_t root = file.get();

  TokenStore s;
  s.path_ = path;
  const int64_t version = h5::read_attr_int(ctx, root, "format_version");
  if (version != kFormatVersion) {
    ctx.fail("format_version " + std::to_string(version) + " is not one this build reads (it reads " +
             std::to_string(kFormatVersion) + ")");
  }
  s.info_.tokenizer_hash = h5::read_attr_string(ctx, root, "tokenizer_hash");
  s.info_.source = h5::read_attr_string(ctx, root, "source");
  const int64_t vocab = h5::read_attr_int(ctx, root, "vocab_size");
  const int64_t eos = h5::read_attr_int(ctx, root, "eos_id");
  const int64_t num_docs = h5::read_attr_int(ctx, root, "num_documents");
  const int64_t num_tokens = h5::read_attr_int(ctx, root, "num_tokens");
  if (vocab <= 0 || vocab > (int64_t(1) << 31)) ctx.fail("vocab_size " + std::to_string(vocab) + " is invalid");
  if (eos < 0 || eos >= vocab) {
    ctx.fail("eos_id " + std::to_string(eos) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  if (num_docs < 0 || num_tokens < 0) ctx.fail("negative num_documents or num_tokens attribute");
  s.info_.vocab_size = vocab;
  s.info_.eos_id = static_cast<int32_t>(eos);
  s.num_tokens_ = num_tokens;

  Dataset tokens = open_dataset(ctx, root, "tokens", {"uint16", "int32"}, file_bytes);
  Dataset offsets = open_dataset(ctx, root, "doc_offsets", {"int64"}, file_bytes);
  if (tokens.length != num_tokens) {
    ctx.fail("dataset 'tokens' has " + std::to_string(tokens.length) + " entries but the num_tokens attribute says " +
             std::to_string(num_tokens));
  }
  if (offsets.length != num_docs + 1) {
    ctx.fail("dataset 'doc_offsets' has " + std::to_string(offsets.length) +
             " entries; expected num_documents + 1 = " + std::to_string(num_docs + 1));
  }
  read_all(ctx, offsets, "doc_offsets", H5T_NATIVE_INT64, s.offsets_, {});
  if (s.offsets_.front() != 0) ctx.fail("doc_offsets[0] is " + std::to_string(s.offsets_.front()) + ", not 0");
  for (int64_t d = 0; d < num_docs; ++d) {
    if (s.offsets_[d + 1] < s.offsets_[d]) {
      ctx.fail("doc_offsets decrease at document " + std::to_string(d) + " (" + std::to_string(s.offsets_[d]) +
               " then " + std::to_string(s.offsets_[d + 1]) + ")");
    }
  }
  if (s.offsets_.back() != num_tokens) {
    ctx.fail("doc_offsets end at " + std::to_string(s.offsets_.back()) + " but the store has " +
             std::to_string(num_tokens) + " tokens");
  }

  const auto bad_token = [&](int64_t i, int64_t id) {
    const int64_t doc = std::upper_bound(s.offsets_.begin(), s.offsets_.end(), i) - s.offsets_.begin() - 1;
    ctx.fail("token id " + std::to_string(id) + " at position " + std::to_string(i) + " (document " +
             std::to_string(doc) + ") is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  };
  if (tokens.type == "uint16") {
    s.token_bytes_ = 2;
    read_all(ctx, tokens, "tokens", H5T_NATIVE_UINT16, s.tokens16_, [&](int64_t first, int64_t n) {
      for (int64_t i = first; i < first + n; ++i)
        if (s.tokens16_[i] >= vocab) bad_token(i, s.tokens16_[i]);
    });
  } else {
    s.token_bytes_ = 4;
    read_all(ctx, tokens, "tokens", H5T_NATIVE_INT32, s.tokens32_, [&](int64_t first, int64_t n) {
      for (int64_t i = first; i < first + n; ++i)
        if (s.tokens32_[i] < 0 || s.tokens32_[i] >= vocab) bad_token(i, s.tokens32_[i]);
    });
  }

  const htri_t has_mask = H5Lexists(root, "loss_mask", H5P_DEFAULT);
  if (has_mask < 0) ctx.fail_h5("looking up dataset 'loss_mask'");
  if (has_mask > 0) {
    Dataset mask = open_dataset(ctx, root, "loss_mask", {"uint8"}, file_bytes);
    if (mask.length != num_tokens) {
      ctx.fail("dataset 'loss_mask' has " + std::to_string(mask.length) + " entries but the store has " +
               std::to_string(num_tokens) + " tokens");
    }
    read_all(ctx, mask, "loss_mask", H5T_NATIVE_UINT8, s.mask_, [&](int64_t first, int64_t n) {
      for (int64_t i = first; i < first + n; ++i) {
        if (s.mask_[i] > 1) {
          ctx.fail("loss_mask value " + std::to_string(s.mask_[i]) + " at position " + std::to_string(i) +
                   " is not 0 or 1");
        }
      }
    });
    s.has_mask_ = true;
  }
  return s;
}

std::shared_ptr<const TokenStore> TokenStore::open_shared(const std::string& path) {
  return std::make_shared<const TokenStore>(open(path));
}

void TokenStore::check_tokenizer(const std::string& tokenizer_hash) const {
  ANVIL_CHECK(tokenizer_hash == info_.tokenizer_hash, "token store '", path_,
              "' was prepared with tokenizer ", info_.tokenizer_hash, " but this run uses tokenizer ",
              tokenizer_hash, " — re-run `anvil data prepare` with this tokenizer, or use the tokenizer the "
              "store was made with");
}

size_t TokenStore::memory_bytes() const {
  return tokens16_.size() * 2 + tokens32_.size() * 4 + mask_.size() + offsets_.size() * 8;
}

void TokenStore::copy_tokens(int64_t begin, int64_t count, int32_t* out) const {
  ANVIL_CHECK(begin >= 0 && count >= 0 && begin + count <= num_tokens_, "token store '", path_,
              "': copy_tokens range [", begin, ", ", begin + count, ") is outside [0, ", num_tokens_, ")");
  if (token_bytes_ == 2) {
    const uint16_t* src = tokens16_.data() + begin;
    for (int64_t i = 0; i < count; ++i) out[i] = src[i];
  } else if (count > 0) {
    std::memcpy(out, tokens32_.data() + begin, count * sizeof(int32_t));
  }
}

std::vector<int32_t> TokenStore::document(int64_t d) const {
  ANVIL_CHECK(d >= 0 && d < num_documents(), "token store '", path_, "': document ", d, " is outside [0, ",
              num_documents(), ")");
  std::vector<int32_t> out(offsets_[d + 1] - offsets_[d]);
  copy_tokens(offsets_[d], static_cast<int64_t>(out.size()), out.data());
  return out;
}

std::vector<uint8_t> TokenStore::document_mask(int64_t d) const {
  ANVIL_CHECK(d >= 0 && d < num_documents(), "token store '", path_, "': document ", d, " is outside [0, ",
              num_documents(), ")");
  if (!has_mask_) return std::vector<uint8_t>(offsets_[d + 1] - offsets_[d], 1);
  return std::vector<uint8_t>(mask_.begin() + offsets_[d], mask_.begin() + offsets_[d + 1]);
}

}  // namespace anvil
