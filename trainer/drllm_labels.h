// The Dr.LLM label cache (trainer/drllm_search.h): each searched sequence's path, kept in the run
// directory so a resumed run (or a later epoch) does not search again. One file per writer
// (drllm_labels/dp<r>.bin: data-parallel rank r, tp/pp rank 0); a run reads every file there.
//
// Format (little-endian), version 1:
//   header: "ANVDRLLB" | u32 version | u32 n (routed layers, 1 .. 4096) | i64 layers[n] |
//           i64 budget | f64 tolerance | u64 FNV-1a of the header bytes before it
//   record: u64 key (drllm_row_key) | u8 actions[n] (0 skip, 1 execute, 2 repeat) |
//           u64 FNV-1a of the record bytes before it
// Records are appended (and flushed) as rows are searched; a trailing partial record (a run killed
// mid-append) is ignored, that row is searched again. Anything else malformed is an Error.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace anvil {

// What the labels were searched for: a file for other settings must not be reused.
struct DrLLMLabelSettings {
  std::vector<int64_t> layers;  // the routed layers, in order
  int64_t budget = 0;
  double tolerance = 0;
  bool operator==(const DrLLMLabelSettings& o) const {
    return layers == o.layers && budget == o.budget && tolerance == o.tolerance;
  }
};

struct DrLLMLabelFile {
  DrLLMLabelSettings settings;
  std::map<uint64_t, std::vector<int32_t>> paths;  // by row key
  size_t valid_bytes = 0;  // the header and the whole records (a partial tail is beyond it)
};

// Parses a label file's bytes; `where` names it in errors.
DrLLMLabelFile parse_drllm_labels(const std::string& bytes, const std::string& where);
// The header and one record as bytes (what the store appends).
std::string drllm_labels_header(const DrLLMLabelSettings& settings);
std::string drllm_labels_record(uint64_t key, const std::vector<int32_t>& path);

// A sequence's key: FNV-1a over its length, token ids, targets and document ids (when given), rows
// of host i32 tensors.
uint64_t drllm_row_key(const int32_t* ids, const int32_t* targets, const int32_t* segments, int64_t T);

class DrLLMLabelStore {
 public:
  // Reads every *.bin label file in `dir` (none: empty); each must be for `settings`. With
  // `own_file` non-empty, add() appends to dir/own_file.
  DrLLMLabelStore(std::string dir, std::string own_file, DrLLMLabelSettings settings);
  const std::vector<int32_t>* find(uint64_t key) const;
  void add(uint64_t key, const std::vector<int32_t>& path);
  size_t size() const { return paths_.size(); }

 private:
  std::string dir_, own_file_;
  DrLLMLabelSettings settings_;
  std::map<uint64_t, std::vector<int32_t>> paths_;
};

}  // namespace anvil
