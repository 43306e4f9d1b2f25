#include "trainer/drllm_labels.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace anvil {

namespace fs = std::filesystem;

namespace {
constexpr char kMagic[8] = {'A', 'N', 'V', 'D', 'R', 'L', 'L', 'B'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxLayers = 4096;

uint64_t fnv1a(const void* data, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// Reads sizeof(T) bytes at `at`, advancing it; false when fewer remain.
template <class T>
bool take(const std::string& in, size_t& at, T& v) {
  if (in.size() - at < sizeof(T)) return false;
  std::memcpy(&v, in.data() + at, sizeof(T));
  at += sizeof(T);
  return true;
}
}  // namespace

std::string drllm_labels_header(const DrLLMLabelSettings& s) {
  std::string out(kMagic, sizeof(kMagic));
  put<uint32_t>(out, kVersion);
  put<uint32_t>(out, static_cast<uint32_t>(s.layers.size()));
  for (int64_t l : s.layers) put<int64_t>(out, l);
  put<int64_t>(out, s.budget);
  put<double>(out, s.tolerance);
  put<uint64_t>(out, fnv1a(out.data(), out.size()));
  return out;
}

std::string drllm_labels_record(uint64_t key, const std::vector<int32_t>& path) {
  std::string out;
  put<uint64_t>(out, key);
  for (int32_t a : path) put<uint8_t>(out, static_cast<uint8_t>(a));
  put<uint64_t>(out, fnv1a(out.data(), out.size()));
  return out;
}

DrLLMLabelFile parse_drllm_labels(const std::string& in, const std::string& where) {
  const std::string fix = " — delete it (the labels are searched again) or point the run at its own directory";
  DrLLMLabelFile file;
  size_t at = 0;
  ANVIL_CHECK(in.size() >= sizeof(kMagic) && std::memcmp(in.data(), kMagic, sizeof(kMagic)) == 0, where,
              ": not a Dr.LLM label file (bad magic)", fix);
  at = sizeof(kMagic);
  uint32_t version = 0, n = 0;
  ANVIL_CHECK(take(in, at, version) && take(in, at, n), where, ": truncated header", fix);
  ANVIL_CHECK(version == kVersion, where, ": label file version ", version, ", this anvil reads version ", kVersion, fix);
  ANVIL_CHECK(n >= 1 && n <= kMaxLayers, where, ": ", n, " routed layers in the header, expected 1 .. ", kMaxLayers,
              fix);
  file.settings.layers.resize(n);
  for (uint32_t i = 0; i < n; ++i)
    ANVIL_CHECK(take(in, at, file.settings.layers[i]), where, ": truncated header", fix);
  uint64_t sum = 0;
  ANVIL_CHECK(take(in, at, file.settings.budget) && take(in, at, file.settings.tolerance), where, ": truncated header",
              fix);
  const size_t header_end = at;
  ANVIL_CHECK(take(in, at, sum) && sum == fnv1a(in.data(), header_end), where, ": header checksum mismatch", fix);
  const size_t record = sizeof(uint64_t) + n + sizeof(uint64_t);
  // A trailing partial record is an interrupted append: ignored (that row is searched again).
  while (in.size() - at >= record) {
    const size_t start = at;
    uint64_t key = 0, check = 0;
    take(in, at, key);
    std::vector<int32_t> path(n);
    for (uint32_t i = 0; i < n; ++i) {
      uint8_t a = 0;
      take(in, at, a);
      path[i] = a;
    }
    take(in, at, check);
    ANVIL_CHECK(check == fnv1a(in.data() + start, record - sizeof(uint64_t)), where, ": record ",
                (start - header_end - sizeof(uint64_t)) / record, " fails its checksum (a corrupted file)", fix);
    for (uint32_t i = 0; i < n; ++i)
      ANVIL_CHECK(path[i] >= 0 && path[i] <= 2, where, ": record action ", path[i], " is not 0, 1 or 2", fix);
    file.paths[key] = std::move(path);
  }
  file.valid_bytes = at;
  return file;
}

uint64_t drllm_row_key(const int32_t* ids, const int32_t* targets, const int32_t* segments, int64_t T) {
  uint64_t h = fnv1a(&T, sizeof(T));
  h = fnv1a(ids, static_cast<size_t>(T) * sizeof(int32_t), h);
  h = fnv1a(targets, static_cast<size_t>(T) * sizeof(int32_t), h);
  if (segments) h = fnv1a(segments, static_cast<size_t>(T) * sizeof(int32_t), h);
  return h;
}

DrLLMLabelStore::DrLLMLabelStore(std::string dir, std::string own_file, DrLLMLabelSettings settings)
    : dir_(std::move(dir)), own_file_(std::move(own_file)), settings_(std::move(settings)) {
  std::error_code ec;
  if (!fs::is_directory(dir_, ec)) return;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir_))
    if (entry.path().extension() == ".bin") files.push_back(entry.path());
  std::sort(files.begin(), files.end());  // a fixed order: the same labels whatever the listing
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    const DrLLMLabelFile file = parse_drllm_labels(bytes.str(), f.string());
    ANVIL_CHECK(file.settings == settings_, f.string(), ": these labels were searched for other router layers, "
                "search_budget or tolerance than this run's — delete ", dir_, " to search again");
    for (const auto& [key, path] : file.paths) paths_.emplace(key, path);
    // Our own file continues after its last whole record (drop an interrupted append's tail).
    if (f.filename() == own_file_ && fs::file_size(f) > file.valid_bytes) fs::resize_file(f, file.valid_bytes);
  }
}

const std::vector<int32_t>* DrLLMLabelStore::find(uint64_t key) const {
  const auto it = paths_.find(key);
  return it == paths_.end() ? nullptr : &it->second;
}

void DrLLMLabelStore::add(uint64_t key, const std::vector<int32_t>& path) {
  ANVIL_CHECK(path.size() == settings_.layers.size(), "Dr.LLM labels: a path of ", path.size(), " actions for ",
              settings_.layers.size(), " routed layers");
  paths_[key] = path;
  if (own_file_.empty()) return;
  fs::create_directories(dir_);
  const fs::path file = fs::path(dir_) / own_file_;
  std::error_code ec;
  const bool fresh = !fs::exists(file, ec) || fs::file_size(file, ec) == 0;
  std::ofstream out(file, std::ios::binary | std::ios::app);
  ANVIL_CHECK(out.good(), "Dr.LLM labels: cannot write ", file.string(), " — check the run directory's permissions");
  if (fresh) out << drllm_labels_header(settings_);
  out << drllm_labels_record(key, path);
  out.flush();
  ANVIL_CHECK(out.good(), "Dr.LLM labels: writing ", file.string(), " failed (disk full?)");
}

}  // namespace anvil
