// SafetensorsIndex: a possibly sharded checkpoint (model.safetensors.index.json and its
// shards, or one model.safetensors) validated as a whole and looked up by tensor name.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/safetensors.h"

namespace anvil {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* kRegenerate = "re-save the checkpoint (save_pretrained) or re-download it";

[[noreturn]] void fail_index(const std::string& path, const std::string& what, const std::string& fix) {
  ANVIL_FAIL("safetensors index '", path, "': ", what, " — ", fix);
}

json read_index(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_index(path, "cannot be read", "check the path and permissions");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail_index(path, std::string("is not valid JSON: ") + e.what(), kRegenerate);
  }
  if (!j.is_object()) fail_index(path, std::string("is a JSON ") + j.type_name() + ", not an object", kRegenerate);
  return j;
}

// A shard must be a plain relative path that stays inside the checkpoint directory.
void check_shard_name(const std::string& index, const std::string& tensor, const std::string& shard) {
  const fs::path p(shard);
  bool escapes = shard.empty() || p.is_absolute();
  for (const auto& part : p) escapes = escapes || part == "..";
  if (escapes)
    fail_index(index, "tensor '" + tensor + "' maps to '" + shard + "', which is not a file inside the checkpoint directory",
               "shard names must be relative file names such as 'model-00001-of-00002.safetensors'");
}

}  // namespace

SafetensorsIndex SafetensorsIndex::open(const std::string& path) {
  SafetensorsIndex out;
  const fs::path p(path);
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    const bool has_index = fs::exists(p / kIndexName), has_single = fs::exists(p / kSingleName);
    ANVIL_CHECK(!(has_index && has_single), "checkpoint directory '", path, "' holds both ", kIndexName, " and ",
                kSingleName, " — remove the stale one so loading is unambiguous");
    ANVIL_CHECK(has_index || has_single, "checkpoint directory '", path, "' holds neither ", kIndexName, " nor ",
                kSingleName, " — point at a Hugging Face model directory or a .safetensors file");
    out.path_ = (p / (has_index ? kIndexName : kSingleName)).string();
  } else {
    out.path_ = path;
  }

  if (out.path_.size() < 5 || out.path_.compare(out.path_.size() - 5, 5, ".json") != 0) {
    out.shards_.push_back(SafetensorsFile::open(out.path_));
    for (const std::string& name : out.shards_[0].names()) out.owner_[name] = 0;
    return out;
  }

  const json index = read_index(out.path_);
  if (index.contains("metadata") && !index["metadata"].is_null()) {
    const json& m = index["metadata"];
    if (!m.is_object()) fail_index(out.path_, "'metadata' is not an object", kRegenerate);
    if (m.contains("total_size")) {
      if (!m["total_size"].is_number_unsigned())
        fail_index(out.path_, "metadata.total_size is " + m["total_size"].dump() + ", not a byte count", kRegenerate);
      out.total_size_ = m["total_size"].get<uint64_t>();
    }
  }
  if (!index.contains("weight_map") || !index["weight_map"].is_object())
    fail_index(out.path_, "has no 'weight_map' object", kRegenerate);

  // Open each distinct shard once, in order of first appearance in the (sorted) map.
  const fs::path dir = fs::path(out.path_).parent_path();
  std::map<std::string, size_t> shard_ids;
  std::map<std::string, size_t> listed;  // tensor -> shard it is listed in
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    if (!shard.is_string())
      fail_index(out.path_, "weight_map['" + tensor + "'] is " + shard.dump() + ", not a file name", kRegenerate);
    const std::string file = shard.get<std::string>();
    check_shard_name(out.path_, tensor, file);
    auto it = shard_ids.find(file);
    if (it == shard_ids.end()) {
      const fs::path shard_path = dir / file;
      if (!fs::is_regular_file(shard_path, ec))
        fail_index(out.path_, "shard '" + shard_path.string() + "' (holding tensor '" + tensor + "') is missing",
                   "download or copy every shard the index names into '" + dir.string() + "'");
      it = shard_ids.emplace(file, out.shards_.size()).first;
      out.shards_.push_back(SafetensorsFile::open(shard_path.string()));
    }
    listed[tensor] = it->second;
  }

  for (const auto& [tensor, id] : listed) {
    if (!out.shards_[id].contains(tensor))
      fail_index(out.path_, "tensor '" + tensor + "' is listed in shard '" + out.shards_[id].path() + "' but is not in it",
                 "the shard and the index come from different saves; " + std::string(kRegenerate));
  }
  for (size_t id = 0; id < out.shards_.size(); ++id) {
    for (const std::string& tensor : out.shards_[id].names()) {
      auto prev = out.owner_.find(tensor);
      if (prev != out.owner_.end())
        fail_index(out.path_, "tensor '" + tensor + "' is in two shards, '" + out.shards_[prev->second].path() +
                                  "' and '" + out.shards_[id].path() + "'",
                   "keep one copy; " + std::string(kRegenerate));
      if (listed.count(tensor) == 0)
        fail_index(out.path_, "tensor '" + tensor + "' is in shard '" + out.shards_[id].path() +
                                  "' but the weight_map does not list it",
                   "the shard and the index come from different saves; " + std::string(kRegenerate));
      out.owner_[tensor] = id;
    }
  }
  return out;
}

std::vector<std::string> SafetensorsIndex::names() const {
  std::vector<std::string> out;
  out.reserve(owner_.size());
  for (const auto& kv : owner_) out.push_back(kv.first);
  return out;
}

const SafetensorsFile& SafetensorsIndex::file_of(const std::string& name) const {
  auto it = owner_.find(name);
  ANVIL_CHECK(it != owner_.end(), "safetensors checkpoint '", path_, "': tensor '", name, "' is in none of its ",
              shards_.size(), " file(s) — check the name against names(); Hugging Face names look like "
              "'model.layers.0.self_attn.q_proj.weight'");
  return shards_[it->second];
}

}  // namespace anvil
