// Hugging Face safetensors: a validated, memory-mapped reader (single file and sharded
// index) and a writer whose output is byte-identical to the `safetensors` package's.
//
// Format: 8-byte little-endian header length N, N bytes of JSON header
//   {"__metadata__": {str: str}, "name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}
// padded with spaces, then the data region; offsets are relative to its first byte and
// the tensors tile it exactly (no gaps, no overlaps, nothing after the last tensor).
// Sharded checkpoints: DIR/model.safetensors.index.json
//   {"metadata": {"total_size": bytes}, "weight_map": {"tensor name": "model-00001-of-00002.safetensors"}}.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace anvil {

using TensorMap = std::map<std::string, Tensor>;
using StringMap = std::map<std::string, std::string>;

// One tensor's header entry.
struct SafetensorsInfo {
  std::string format_dtype;  // as written in the file: "F32", "BF16", "BOOL", "F64", ...
  bool supported = false;    // anvil has a dtype for it; BOOL reads as u8 (0/1)
  DType dtype = DType::U8;   // meaningful only when supported
  Shape shape;
  uint64_t begin = 0;        // byte offsets into the data region, [begin, end)
  uint64_t end = 0;
  int64_t numel() const { return shape_numel(shape); }
};

// The header's dtype string for an anvil dtype ("F32", "BF16", "F16", "I32", "I64", "I8", "U8").
const char* safetensors_dtype_name(DType dt);

// A safetensors file, memory-mapped. Copies are cheap and share the mapping.
class SafetensorsFile {
 public:
  static constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the safetensors package's limit

  // Maps `path` and validates the whole header before anything is read: header length,
  // JSON object, UTF-8, every entry's dtype/shape/offsets, offsets inside the data region,
  // tensors tiling it without overlap or gap, `__metadata__` string -> string. Any problem
  // is an anvil::Error naming the file, the tensor and the fix.
  // The file is opened read-only and mapped private copy-on-write: writing into a view
  // changes this process's copy only, never the file. Truncating or rewriting the file
  // while it is mapped is undefined (SIGBUS): write new checkpoints under a new name
  // (write_safetensors renames a finished temp file into place, which is safe).
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const;
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const SafetensorsInfo& info(const std::string& name) const;  // throws naming the file when absent
  const StringMap& metadata() const;
  uint64_t data_offset() const;  // file offset of the data region (8 + N)

  // A view on the mapping (no copy); it keeps the mapping alive after this object is
  // gone. A tensor whose offset is not a multiple of its element size (never the case
  // in files written by the safetensors package or by anvil) is returned as an aligned
  // copy instead. Throws for dtypes anvil cannot hold (F64, U16, F8_*, ...).
  Tensor tensor(const std::string& name) const;
  // A new contiguous f32 tensor: exact for f32/bf16/f16 and for integers of magnitude
  // up to 2^24; throws for i64/i32 values that f32 cannot represent exactly.
  Tensor get_f32(const std::string& name) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

// Writes `tensors` (CPU, any anvil dtype, any strides) as one safetensors file, as the
// `safetensors` package does: tensors ordered by element size (largest first) then name,
// so every tensor is aligned; compact JSON header with `__metadata__` first (omitted
// when empty), padded with spaces to a multiple of 8. Writes `path + ".tmp"`, then
// renames it to `path`; on failure the temp file is removed and `path` is untouched.
void write_safetensors(const std::string& path, const TensorMap& tensors, const StringMap& metadata = {});

// The exact bytes write_safetensors would write (for tests and small in-memory uses).
std::string encode_safetensors(const TensorMap& tensors, const StringMap& metadata = {});

// Writes `tensors` into `dir` as transformers does: shards of at most `max_shard_bytes`
// of tensor data (a tensor larger than that gets a shard of its own), filled in name
// order, named model-0000i-of-0000n.safetensors, plus model.safetensors.index.json.
// When everything fits in one shard, writes a single model.safetensors and no index.
// `metadata` goes into every shard. Refuses a `dir` that already holds a checkpoint of
// the other form (a stale file would make loading ambiguous). Returns the file names written.
std::vector<std::string> write_safetensors_sharded(const std::string& dir, const TensorMap& tensors,
                                                   uint64_t max_shard_bytes, const StringMap& metadata = {});

// A checkpoint that may be sharded: one lookup over all shards.
class SafetensorsIndex {
 public:
  static constexpr const char* kIndexName = "model.safetensors.index.json";
  static constexpr const char* kSingleName = "model.safetensors";

  // `path` is a directory (holding model.safetensors.index.json or model.safetensors),
  // an index .json file, or a single .safetensors file. Validates the index (a JSON
  // object whose weight_map maps names to shard files inside the directory), opens and
  // validates every shard, and checks that every weight_map entry is in its shard, that
  // no tensor is in two shards and that no shard holds a tensor the index does not list.
  static SafetensorsIndex open(const std::string& path);

  const std::string& path() const { return path_; }  // the index or the single file
  std::vector<std::string> names() const;           // sorted
  bool contains(const std::string& name) const { return owner_.count(name) != 0; }
  const SafetensorsInfo& info(const std::string& name) const { return file_of(name).info(name); }
  Tensor tensor(const std::string& name) const { return file_of(name).tensor(name); }
  Tensor get_f32(const std::string& name) const { return file_of(name).get_f32(name); }
  const SafetensorsFile& file_of(const std::string& name) const;
  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  std::optional<uint64_t> total_size() const { return total_size_; }  // from the index's metadata

 private:
  std::string path_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, size_t> owner_;  // tensor name -> index into shards_
  std::optional<uint64_t> total_size_;
};

}  // namespace anvil
