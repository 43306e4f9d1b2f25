// SafetensorsFile: maps a .safetensors file and validates its header completely before
// handing out views or f32 copies of its tensors.
#include "data/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "data/safetensors_detail.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian; add byte swapping");

namespace anvil {
namespace detail {

// Ranks follow the declaration order of the safetensors package's Dtype enum.
static const FormatDType kFormatDTypes[] = {
    {"BOOL", 1, true, DType::U8, 0},     {"U8", 1, true, DType::U8, 4},       {"I8", 1, true, DType::I8, 5},
    {"F8_E5M2", 1, false, DType::U8, 6}, {"F8_E4M3", 1, false, DType::U8, 7}, {"F8_E8M0", 1, false, DType::U8, 8},
    {"I16", 2, false, DType::U8, 9},     {"U16", 2, false, DType::U8, 10},    {"F16", 2, true, DType::F16, 11},
    {"BF16", 2, true, DType::BF16, 12},  {"I32", 4, true, DType::I32, 13},    {"U32", 4, false, DType::U8, 14},
    {"F32", 4, true, DType::F32, 15},    {"C64", 8, false, DType::U8, 16},    {"F64", 8, false, DType::U8, 17},
    {"I64", 8, true, DType::I64, 18},    {"U64", 8, false, DType::U8, 19},
};

const FormatDType* find_format_dtype(const std::string& name) {
  for (const FormatDType& d : kFormatDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const FormatDType& format_dtype_of(DType dt) {
  for (const FormatDType& d : kFormatDTypes)
    if (d.supported && d.dtype == dt && std::strcmp(d.name, "BOOL") != 0) return d;
  ANVIL_FAIL("dtype ", dtype_name(dt), " has no safetensors name");
}

std::string known_format_dtypes() {
  std::string out;
  for (const FormatDType& d : kFormatDTypes) out += (out.empty() ? "" : ", ") + std::string(d.name);
  return out;
}

}  // namespace detail

const char* safetensors_dtype_name(DType dt) { return detail::format_dtype_of(dt).name; }

namespace {

using json = nlohmann::json;

// The whole file mapped; unmapped when the last file object and view are gone.
struct Mapping {
  void* base = nullptr;
  size_t bytes = 0;
  ~Mapping() {
    if (base) munmap(base, bytes);
  }
};

[[noreturn]] void fail_file(const std::string& path, const std::string& what, const std::string& fix) {
  ANVIL_FAIL("safetensors file '", path, "': ", what, " — ", fix);
}

[[noreturn]] void fail_tensor(const std::string& path, const std::string& name, const std::string& what,
                              const std::string& fix) {
  ANVIL_FAIL("safetensors file '", path, "': tensor '", name, "': ", what, " — ", fix);
}

const char* kReexport = "re-export the checkpoint (e.g. safetensors.torch.save_file) or re-download it";

std::shared_ptr<Mapping> map_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_file(path, std::string("cannot open: ") + std::strerror(errno), "check the path and permissions");
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail_file(path, "not a regular file", "pass the path of a .safetensors file");
  }
  auto m = std::make_shared<Mapping>();
  m->bytes = static_cast<size_t>(st.st_size);
  if (m->bytes < 8) {
    ::close(fd);
    fail_file(path, "truncated: the file is " + std::to_string(m->bytes) +
                        " bytes, shorter than the 8-byte header length", kReexport);
  }
  // Private and writable: in-place ops on a view copy the page instead of faulting.
  // Fall back to read-only where strict overcommit refuses to reserve that much.
  void* p = mmap(nullptr, m->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED && errno == ENOMEM) p = mmap(nullptr, m->bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (p == MAP_FAILED) fail_file(path, std::string("cannot map: ") + std::strerror(map_errno), "check free address space");
  m->base = p;
  return m;
}

// nlohmann quotes the bytes it last read, which may be invalid UTF-8: escape them.
std::string escape_non_ascii(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) out += static_cast<char>(c);
    else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

// Rejects duplicate top-level keys, which nlohmann would otherwise merge silently
// (a duplicate could hide a second, overlapping entry).
json parse_header(const std::string& path, const char* text, size_t n) {
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && parsed.is_string()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text, text + n, on_event);
  } catch (const json::exception& e) {
    fail_file(path, "header is not valid UTF-8 JSON: " + escape_non_ascii(e.what()), kReexport);
  }
  if (!header.is_object())
    fail_file(path, std::string("header is a JSON ") + header.type_name() + ", not an object", kReexport);
  if (!duplicate.empty()) fail_tensor(path, duplicate, "appears twice in the header", kReexport);
  return header;
}

StringMap parse_metadata(const std::string& path, const json& value) {
  StringMap out;
  if (value.is_null()) return out;  // the safetensors package accepts null
  if (!value.is_object())
    fail_file(path, std::string("__metadata__ is a JSON ") + value.type_name() + ", not a string -> string map",
              "write metadata values as strings (e.g. json.dumps them)");
  for (const auto& [key, v] : value.items()) {
    if (!v.is_string())
      fail_file(path, "__metadata__ entry '" + key + "' is a JSON " + v.type_name() + ", not a string",
                "write metadata values as strings (e.g. json.dumps them)");
    out[key] = v.get<std::string>();
  }
  return out;
}

uint64_t checked_offset(const std::string& path, const std::string& name, const json& v) {
  if (!v.is_number_unsigned())
    fail_tensor(path, name, "data_offsets holds " + v.dump() + ", not a non-negative integer", kReexport);
  return v.get<uint64_t>();
}

SafetensorsInfo parse_entry(const std::string& path, const std::string& name, const json& entry,
                            uint64_t data_bytes) {
  if (!entry.is_object())
    fail_tensor(path, name, std::string("header entry is a JSON ") + entry.type_name() + ", not an object", kReexport);
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(field)) fail_tensor(path, name, std::string("header entry lacks '") + field + "'", kReexport);

  SafetensorsInfo info;
  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) fail_tensor(path, name, "dtype is " + dtype.dump() + ", not a string", kReexport);
  info.format_dtype = dtype.get<std::string>();
  const detail::FormatDType* fd = detail::find_format_dtype(info.format_dtype);
  if (!fd)
    fail_tensor(path, name, "unknown dtype '" + info.format_dtype + "'",
                "anvil knows " + detail::known_format_dtypes() + "; convert the tensor to one of them");
  info.supported = fd->supported;
  info.dtype = fd->dtype;

  const json& shape = entry["shape"];
  if (!shape.is_array()) fail_tensor(path, name, "shape is " + shape.dump() + ", not an array", kReexport);
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& d : shape) {
    if (!d.is_number_integer())
      fail_tensor(path, name, "shape " + shape.dump() + " holds " + d.dump() + ", not an integer", kReexport);
    if (!d.is_number_unsigned()) fail_tensor(path, name, "shape " + shape.dump() + " has a negative size", kReexport);
    const uint64_t size = d.get<uint64_t>();
    if (size > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail_tensor(path, name, "shape " + shape.dump() + " has a size beyond 2^63", kReexport);
    info.shape.push_back(static_cast<int64_t>(size));
    overflow = overflow || __builtin_mul_overflow(numel, size, &numel);
  }
  uint64_t nbytes = 0;
  overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(fd->bytes), &nbytes);

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    fail_tensor(path, name, "data_offsets is " + offsets.dump() + ", not [begin, end]", kReexport);
  info.begin = checked_offset(path, name, offsets[0]);
  info.end = checked_offset(path, name, offsets[1]);
  if (info.begin > info.end)
    fail_tensor(path, name, "data_offsets " + offsets.dump() + " has begin > end", kReexport);
  if (overflow || nbytes != info.end - info.begin)
    fail_tensor(path, name,
                "shape " + shape.dump() + " of " + info.format_dtype + " needs " +
                    (overflow ? std::string("more than 2^64") : std::to_string(nbytes)) +
                    " bytes but data_offsets " + offsets.dump() + " span " + std::to_string(info.end - info.begin),
                kReexport);
  if (info.end > data_bytes)
    fail_tensor(path, name,
                "data_offsets " + offsets.dump() + " run past the end of the data region (" +
                    std::to_string(data_bytes) + " bytes): the file is truncated or the header is wrong",
                kReexport);
  return info;
}

// The tensors must tile [0, data_bytes) exactly, as the format requires (no holes, so
// no hidden payloads; no overlaps, so no aliasing views).
void check_tiling(const std::string& path, const std::map<std::string, SafetensorsInfo>& tensors,
                  uint64_t data_bytes) {
  std::vector<std::pair<const std::string*, const SafetensorsInfo*>> order;
  for (const auto& [name, info] : tensors) order.emplace_back(&name, &info);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::make_pair(a.second->begin, a.second->end) < std::make_pair(b.second->begin, b.second->end);
  });
  uint64_t covered = 0;
  const std::string* last = nullptr;
  for (const auto& [name, info] : order) {
    if (info->begin < covered)
      fail_tensor(path, *name,
                  "data_offsets [" + std::to_string(info->begin) + ", " + std::to_string(info->end) +
                      "] overlap tensor '" + *last + "', which ends at " + std::to_string(covered),
                  kReexport);
    if (info->begin > covered)
      fail_tensor(path, *name,
                  "bytes [" + std::to_string(covered) + ", " + std::to_string(info->begin) +
                      ") of the data region before it belong to no tensor (the format allows no gaps)",
                  kReexport);
    covered = info->end;
    if (info->end > info->begin || !last) last = name;
  }
  if (covered != data_bytes)
    fail_file(path,
              "the data region is " + std::to_string(data_bytes) + " bytes but the tensors end at " +
                  std::to_string(covered) + " (the format allows no trailing bytes)",
              kReexport);
}

}  // namespace

struct SafetensorsFile::Impl {
  std::string path;
  std::shared_ptr<Mapping> mapping;
  uint64_t data_offset = 0;
  std::map<std::string, SafetensorsInfo> tensors;
  StringMap metadata;

  const uint8_t* data() const { return static_cast<const uint8_t*>(mapping->base) + data_offset; }
};

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  impl->mapping = map_file(path);
  const uint8_t* bytes = static_cast<const uint8_t*>(impl->mapping->base);
  const uint64_t file_bytes = impl->mapping->bytes;

  uint64_t n = 0;
  std::memcpy(&n, bytes, 8);
  if (n < 2) fail_file(path, "header length " + std::to_string(n) + " is too small for a JSON object", kReexport);
  if (n > kMaxHeaderBytes)
    fail_file(path, "header length " + std::to_string(n) + " exceeds the 100 MB limit: this is not a safetensors file or its first 8 bytes are damaged", kReexport);
  if (n > file_bytes - 8)
    fail_file(path, "truncated: the header length is " + std::to_string(n) + " bytes but only " +
                        std::to_string(file_bytes - 8) + " follow it", kReexport);
  impl->data_offset = 8 + n;
  const uint64_t data_bytes = file_bytes - impl->data_offset;

  const json header = parse_header(path, reinterpret_cast<const char*>(bytes + 8), n);
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") impl->metadata = parse_metadata(path, entry);
    else impl->tensors.emplace(name, parse_entry(path, name, entry, data_bytes));
  }
  check_tiling(path, impl->tensors, data_bytes);

  SafetensorsFile file;
  file.impl_ = std::move(impl);
  return file;
}

const std::string& SafetensorsFile::path() const { return impl_->path; }
const StringMap& SafetensorsFile::metadata() const { return impl_->metadata; }
uint64_t SafetensorsFile::data_offset() const { return impl_->data_offset; }
bool SafetensorsFile::contains(const std::string& name) const { return impl_->tensors.count(name) != 0; }

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(impl_->tensors.size());
  for (const auto& kv : impl_->tensors) out.push_back(kv.first);
  return out;
}

const SafetensorsInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = impl_->tensors.find(name);
  if (it == impl_->tensors.end())
    fail_tensor(impl_->path, name, "not in this file (" + std::to_string(impl_->tensors.size()) + " tensors)",
                "check the name against names(); Hugging Face names look like 'model.layers.0.self_attn.q_proj.weight'");
  return it->second;
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsInfo& i = info(name);
  if (!i.supported)
    fail_tensor(impl_->path, name, "dtype " + i.format_dtype + " has no anvil equivalent",
                "convert the checkpoint's tensor to F32, BF16 or F16 before loading it");
  const uint8_t* src = impl_->data() + i.begin;
  if (reinterpret_cast<uintptr_t>(src) % dtype_size(i.dtype) != 0) {  // misaligned: copy
    Tensor copy = Tensor::empty(i.shape, i.dtype);
    if (copy.nbytes() > 0) std::memcpy(copy.raw_data(), src, copy.nbytes());
    return copy;
  }
  std::shared_ptr<Mapping> keep = impl_->mapping;
  return Tensor::from_external(const_cast<uint8_t*>(src), i.shape, i.dtype, Device::cpu(), [keep] {});
}

Tensor SafetensorsFile::get_f32(const std::string& name) const {
  const SafetensorsInfo& i = info(name);
  if (!i.supported) tensor(name);  // throws the dtype error
  Tensor out = Tensor::empty(i.shape, DType::F32);
  float* dst = out.data<float>();
  const uint8_t* src = impl_->data() + i.begin;
  const int64_t n = i.numel();
  auto load = [&](auto tag, int64_t k) {
    decltype(tag) v;
    std::memcpy(&v, src + k * sizeof(v), sizeof(v));
    return v;
  };
  auto exact_int = [&](auto tag) {
    for (int64_t k = 0; k < n; ++k) {
      const auto v = load(tag, k);
      dst[k] = static_cast<float>(v);
      if (static_cast<double>(dst[k]) != static_cast<double>(v))
        fail_tensor(impl_->path, name,
                    "element " + std::to_string(k) + " = " + std::to_string(v) + " is not exactly representable in f32",
                    "read it with tensor(name) as " + std::string(dtype_name(i.dtype)));
    }
  };
  switch (i.dtype) {
    case DType::F32: if (n > 0) std::memcpy(dst, src, n * 4); break;
    case DType::BF16: for (int64_t k = 0; k < n; ++k) dst[k] = bf16_to_float(load(uint16_t{}, k)); break;
    case DType::F16: for (int64_t k = 0; k < n; ++k) dst[k] = f16_to_float(load(uint16_t{}, k)); break;
    case DType::I32: exact_int(int32_t{}); break;
    case DType::I64: exact_int(int64_t{}); break;
    case DType::I8: for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<int8_t>(src[k]); break;
    case DType::U8: for (int64_t k = 0; k < n; ++k) dst[k] = src[k]; break;
  }
  return out;
}

}  // namespace anvil
