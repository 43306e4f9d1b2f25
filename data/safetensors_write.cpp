// Writing safetensors: single files byte-identical to the `safetensors` package's
// serialize(), and transformers-style sharded checkpoints with an index.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "data/safetensors.h"
#include "data/safetensors_detail.h"

namespace anvil {
namespace {

namespace fs = std::filesystem;

// Strict UTF-8 (no overlong forms, no surrogates, at most U+10FFFF), as JSON requires.
bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    const unsigned c = *p++;
    if (c < 0x80) continue;
    int extra;
    unsigned cp, min;
    if ((c & 0xe0) == 0xc0) extra = 1, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0) extra = 2, cp = c & 0x0f, min = 0x800;
    else if ((c & 0xf8) == 0xf0) extra = 3, cp = c & 0x07, min = 0x10000;
    else return false;
    if (end - p < extra) return false;
    for (int k = 0; k < extra; ++k) {
      if ((p[k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[k] & 0x3f);
    }
    p += extra;
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
  }
  return true;
}

struct PlannedTensor {
  std::string name;
  Tensor data;  // contiguous, CPU
  const detail::FormatDType* dtype;
};

// Validates the inputs and lays the tensors out as safetensors' serialize() does.
struct Layout {
  std::vector<PlannedTensor> order;
  std::string header;  // length prefix + JSON + space padding

  Layout(const TensorMap& tensors, const StringMap& metadata, const std::string& where) {
    for (const auto& [key, value] : metadata)
      ANVIL_CHECK(valid_utf8(key) && valid_utf8(value), "writing safetensors '", where,
                  "': a metadata key or value is not valid UTF-8 — safetensors headers are JSON; encode bytes "
                  "as text (e.g. base64)");
    for (const auto& [name, t] : tensors) {
      ANVIL_CHECK(name != "__metadata__", "writing safetensors '", where,
                  "': a tensor may not be named '__metadata__' (the header's metadata key) — rename it");
      ANVIL_CHECK(valid_utf8(name), "writing safetensors '", where,
                  "': a tensor name is not valid UTF-8 — safetensors headers are JSON; rename it");
      ANVIL_CHECK(t.defined(), "writing safetensors '", where, "': tensor '", name,
                  "' is undefined — pass a tensor that holds data");
      ANVIL_CHECK(t.device().is_cpu(), "writing safetensors '", where, "': tensor '", name, "' is ", t.describe(),
                  " — copy it to the CPU first (no hidden device transfers)");
      order.push_back({name, t.contiguous(), &detail::format_dtype_of(t.dtype())});
    }
    std::stable_sort(order.begin(), order.end(), [](const PlannedTensor& a, const PlannedTensor& b) {
      return a.dtype->rank > b.dtype->rank;  // names already sorted (std::map)
    });

    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    if (!metadata.empty()) {
      nlohmann::ordered_json m = nlohmann::ordered_json::object();
      for (const auto& [key, value] : metadata) m[key] = value;
      h["__metadata__"] = m;
    }
    uint64_t offset = 0;
    for (const PlannedTensor& p : order) {
      nlohmann::ordered_json e = nlohmann::ordered_json::object();
      e["dtype"] = p.dtype->name;
      e["shape"] = p.data.shape();
      e["data_offsets"] = {offset, offset + p.data.nbytes()};
      offset += p.data.nbytes();
      h[p.name] = e;
    }
    std::string text = h.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    const uint64_t n = text.size();
    header.resize(8);
    std::memcpy(header.data(), &n, 8);
    header += text;
  }
};

void write_or_throw(std::FILE* f, const void* data, size_t bytes, const std::string& tmp) {
  if (bytes > 0 && std::fwrite(data, 1, bytes, f) != bytes)
    ANVIL_FAIL("writing safetensors '", tmp, "' failed: ", std::strerror(errno), " — check free disk space");
}

}  // namespace

std::string encode_safetensors(const TensorMap& tensors, const StringMap& metadata) {
  Layout layout(tensors, metadata, "(in memory)");
  std::string out = layout.header;
  for (const PlannedTensor& p : layout.order)
    if (p.data.nbytes() > 0) out.append(static_cast<const char*>(p.data.raw_data()), p.data.nbytes());
  return out;
}

void write_safetensors(const std::string& path, const TensorMap& tensors, const StringMap& metadata) {
  Layout layout(tensors, metadata, path);
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  ANVIL_CHECK(f, "cannot create '", tmp, "': ", std::strerror(errno), " — check that the directory exists and is writable");
  try {
    write_or_throw(f, layout.header.data(), layout.header.size(), tmp);
    for (const PlannedTensor& p : layout.order) write_or_throw(f, p.data.raw_data(), p.data.nbytes(), tmp);
    ANVIL_CHECK(std::fflush(f) == 0 && fsync(fileno(f)) == 0, "writing safetensors '", tmp,
                "' failed: ", std::strerror(errno), " — check free disk space");
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  const bool closed = std::fclose(f) == 0;
  if (!closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(tmp.c_str());
    ANVIL_FAIL("cannot finish '", path, "': ", reason, " — check the directory is writable and has space");
  }
}

std::vector<std::string> write_safetensors_sharded(const std::string& dir, const TensorMap& tensors,
                                                   uint64_t max_shard_bytes, const StringMap& metadata) {
  ANVIL_CHECK(max_shard_bytes > 0, "write_safetensors_sharded('", dir, "'): max_shard_bytes is 0 — pass a positive size such as 5 GB");
  // transformers refuses a safetensors file whose metadata lacks a known "format".
  StringMap shard_metadata = metadata;
  shard_metadata.emplace("format", "pt");

  std::vector<std::vector<std::string>> shards(1);
  uint64_t shard_bytes = 0, total = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t bytes = t.defined() ? t.nbytes() : 0;
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(name);
    shard_bytes += bytes;
    total += bytes;
  }

  const fs::path root(dir);
  std::error_code ec;
  fs::create_directories(root, ec);
  ANVIL_CHECK(!ec, "cannot create checkpoint directory '", dir, "': ", ec.message(), " — check the path and permissions");
  const bool single = shards.size() == 1;
  const fs::path other = root / (single ? SafetensorsIndex::kIndexName : SafetensorsIndex::kSingleName);
  ANVIL_CHECK(!fs::exists(other), "'", dir, "' already holds '", other.filename().string(),
              "' — a ", single ? "single-file" : "sharded",
              " checkpoint written beside it would make loading ambiguous; write into an empty directory or remove it");

  std::vector<std::string> written;
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    const std::string file = single ? SafetensorsIndex::kSingleName : name;
    TensorMap part;
    for (const std::string& t : shards[s]) {
      part.emplace(t, tensors.at(t));
      weight_map[t] = file;
    }
    write_safetensors((root / file).string(), part, shard_metadata);
    written.push_back(file);
  }
  if (single) return written;

  // The index goes last, so it never names a shard that is not complete.
  nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  const std::string path = (root / SafetensorsIndex::kIndexName).string();
  const std::string tmp = path + ".tmp";
  {
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    ANVIL_CHECK(f, "cannot create '", tmp, "': ", std::strerror(errno), " — check the directory is writable");
    const std::string text = index.dump(2) + "\n";
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    if (std::fclose(f) != 0 || !ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
      std::remove(tmp.c_str());
      ANVIL_FAIL("cannot write '", path, "': ", std::strerror(errno), " — check free disk space");
    }
  }
  written.push_back(SafetensorsIndex::kIndexName);
  return written;
}

}  // namespace anvil
