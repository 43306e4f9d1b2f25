#include "core/tensor.h"

#include "core/cuda_device.h"

#include <cstring>
#include <sstream>

namespace anvil {

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

Storage::Storage(size_t bytes, Device device)
    : bytes_(bytes), device_(device), allocator_(&allocator_for(device)) {
  data_ = allocator_->allocate(bytes);
}

Storage::Storage(void* data, size_t bytes, Device device, std::function<void()> release)
    : data_(data), bytes_(bytes), device_(device), release_(std::move(release)) {}

Storage::~Storage() {
  if (allocator_) allocator_->deallocate(data_, bytes_);
  else if (release_) release_();
}

namespace {

void check_shape_valid(const Shape& shape) {
  for (int64_t s : shape)
    ANVIL_CHECK(s >= 0, "invalid tensor shape ", shape_str(shape), " — sizes must be >= 0");
}

// Reads/writes one element of any dtype as double (host-side, not for hot loops).
double load_as_double(const void* base, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::BF16: return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::F16: return f16_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::I32: return static_cast<const int32_t*>(base)[i];
    case DType::I64: return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DType::I8: return static_cast<const int8_t*>(base)[i];
    case DType::U8: return static_cast<const uint8_t*>(base)[i];
  }
  return 0;
}

void store_from_double(void* base, DType dt, int64_t i, double v) {
  switch (dt) {
    case DType::F32: static_cast<float*>(base)[i] = static_cast<float>(v); break;
    case DType::BF16: static_cast<uint16_t*>(base)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::F16: static_cast<uint16_t*>(base)[i] = float_to_f16(static_cast<float>(v)); break;
    case DType::I32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v); break;
    case DType::I64: static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v); break;
    case DType::I8: static_cast<int8_t*>(base)[i] = static_cast<int8_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(v); break;
  }
}

// Calls fn(element offset) for every element of (shape, strides) in row-major logical order.
template <class Fn>
void for_each_offset(const Shape& shape, const Shape& strides, int64_t base, Fn&& fn) {
  const int nd = static_cast<int>(shape.size());
  if (shape_numel(shape) == 0) return;
  std::vector<int64_t> idx(nd, 0);
  int64_t off = base;
  while (true) {
    fn(off);
    int d = nd - 1;
    for (; d >= 0; --d) {
      off += strides[d];
      if (++idx[d] < shape[d]) break;
      off -= strides[d] * shape[d];
      idx[d] = 0;
    }
    if (d < 0) return;
  }
}

void require_cpu(const Tensor& t, const char* op) {
  ANVIL_CHECK(t.device().is_cpu(), op, " on ", t.describe(),
              " needs a CPU tensor — copy it to the host explicitly first");
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  check_shape_valid(shape);
  Tensor t;
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  t.dtype_ = dtype;
  t.device_ = device;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device.is_cpu() && t.nbytes() > 0) std::memset(t.raw_data(), 0, t.nbytes());
  else t.fill_(0.0);
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype) {
  Tensor t = empty(shape, dtype);
  t.fill_(value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  ANVIL_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ",
              values.size(), " values do not fill shape ", shape_str(shape));
  Tensor t = empty(shape, DType::F32);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::from_vector(const std::vector<int32_t>& values, const Shape& shape) {
  ANVIL_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ",
              values.size(), " values do not fill shape ", shape_str(shape));
  Tensor t = empty(shape, DType::I32);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

Tensor Tensor::from_external(void* data, const Shape& shape, DType dtype, Device device,
                             std::function<void()> release) {
  check_shape_valid(shape);
  Tensor t;
  t.storage_ = std::make_shared<Storage>(data, static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype),
                                         device, std::move(release));
  t.dtype_ = dtype;
  t.device_ = device;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

int Tensor::normalize_dim(int d) const {
  const int nd = dim();
  const int n = d < 0 ? d + nd : d;
  ANVIL_CHECK(n >= 0 && n < nd, "dimension ", d, " out of range for ", describe());
  return n;
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_) || numel() <= 1; }

void* Tensor::raw_data() const {
  ANVIL_CHECK(defined(), "use of an undefined tensor — it was never allocated");
  return static_cast<char*>(storage_->data()) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

Tensor Tensor::view(const Shape& shape) const {
  ANVIL_CHECK(is_contiguous(), "view", shape_str(shape), " of non-contiguous ", describe(),
              " — call .contiguous() first");
  Shape resolved = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < resolved.size(); ++i) {
    if (resolved[i] == -1) {
      ANVIL_CHECK(infer < 0, "view", shape_str(shape), ": only one dimension may be -1");
      infer = static_cast<int>(i);
    } else {
      known *= resolved[i];
    }
  }
  if (infer >= 0) {
    ANVIL_CHECK(known > 0 && numel() % known == 0, "view", shape_str(shape), " cannot hold ", numel(),
                " elements of ", describe());
    resolved[infer] = numel() / known;
  }
  ANVIL_CHECK(shape_numel(resolved) == numel(), "view", shape_str(shape), " has ", shape_numel(resolved),
              " elements but ", describe(), " has ", numel());
  Tensor t = *this;
  t.shape_ = resolved;
  t.strides_ = contiguous_strides(resolved);
  return t;
}

Tensor Tensor::slice(int d, int64_t start, int64_t end) const {
  const int n = normalize_dim(d);
  ANVIL_CHECK(0 <= start && start <= end && end <= shape_[n], "slice [", start, ", ", end,
              ") out of range for dimension ", d, " of ", describe());
  Tensor t = *this;
  t.offset_ += start * strides_[n];
  t.shape_[n] = end - start;
  return t;
}

Tensor Tensor::select(int d, int64_t index) const {
  const int n = normalize_dim(d);
  ANVIL_CHECK(0 <= index && index < shape_[n], "index ", index, " out of range for dimension ", d,
              " of ", describe());
  Tensor t = *this;
  t.offset_ += index * strides_[n];
  t.shape_.erase(t.shape_.begin() + n);
  t.strides_.erase(t.strides_.begin() + n);
  return t;
}

Tensor Tensor::transpose(int a, int b) const {
  const int na = normalize_dim(a), nb = normalize_dim(b);
  Tensor t = *this;
  std::swap(t.shape_[na], t.shape_[nb]);
  std::swap(t.strides_[na], t.strides_[nb]);
  return t;
}

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t offset) const {
  ANVIL_CHECK(shape.size() == strides.size(), "as_strided: shape ", shape_str(shape), " and strides ",
              shape_str(strides), " differ in rank");
  int64_t last = offset;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) { last = -1; break; }
    last += (shape[i] - 1) * strides[i];
  }
  const int64_t capacity = static_cast<int64_t>(storage_->bytes() / dtype_size(dtype_));
  ANVIL_CHECK(offset >= 0 && last < capacity, "as_strided view ", shape_str(shape), " at offset ", offset,
              " reaches past the storage of ", describe());
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = strides;
  t.offset_ = offset;
  return t;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device_);
  t.copy_(*this);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  Tensor t = empty(shape_, dtype, device_);
  t.copy_(*this);
  return t;
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  Tensor t = empty(shape_, dtype_, device);
  t.copy_(*this);
  return t;
}

void Tensor::copy_(const Tensor& src) {
  ANVIL_CHECK(shape_ == src.shape_, "copy_: shape ", shape_str(src.shape_), " into ", describe());
  if (device_.is_cuda() || src.device_.is_cuda()) return cuda_copy(src, *this);
  if (numel() == 0) return;
  if (dtype_ == src.dtype_ && is_contiguous() && src.is_contiguous()) {
    std::memmove(raw_data(), src.raw_data(), nbytes());
    return;
  }
  const int nd = dim();
  if (dtype_ == src.dtype_ && nd >= 1 && strides_[nd - 1] == 1 && src.strides_[nd - 1] == 1) {
    // Rows whose last dim is contiguous on both sides (slices of wider buffers, e.g. KV-cache
    // positions): one memcpy per row.
    const Shape rows_shape(shape_.begin(), shape_.end() - 1);
    const size_t row_bytes = static_cast<size_t>(shape_[nd - 1]) * dtype_size(dtype_);
    std::vector<int64_t> dst_rows;
    for_each_offset(rows_shape, Shape(strides_.begin(), strides_.end() - 1), offset_,
                    [&](int64_t o) { dst_rows.push_back(o); });
    char* dbase = static_cast<char*>(storage_->data());
    const char* sbase = static_cast<const char*>(src.storage_->data());
    const int64_t es = static_cast<int64_t>(dtype_size(dtype_));
    size_t k = 0;
    for_each_offset(rows_shape, Shape(src.strides_.begin(), src.strides_.end() - 1), src.offset_,
                    [&](int64_t o) { std::memmove(dbase + dst_rows[k++] * es, sbase + o * es, row_bytes); });
    return;
  }
  std::vector<int64_t> dst_offsets;
  dst_offsets.reserve(numel());
  for_each_offset(shape_, strides_, 0, [&](int64_t o) { dst_offsets.push_back(o); });
  const void* sbase = static_cast<char*>(src.storage_->data()) + 0;
  void* dbase = storage_->data();
  size_t k = 0;
  if (dtype_ == src.dtype_) {
    const size_t es = dtype_size(dtype_);
    for_each_offset(src.shape_, src.strides_, src.offset_, [&](int64_t o) {
      std::memcpy(static_cast<char*>(dbase) + (offset_ + dst_offsets[k++]) * es,
                  static_cast<const char*>(sbase) + o * es, es);
    });
  } else {
    for_each_offset(src.shape_, src.strides_, src.offset_, [&](int64_t o) {
      store_from_double(dbase, dtype_, offset_ + dst_offsets[k++], load_as_double(sbase, src.dtype_, o));
    });
  }
}

void Tensor::fill_(double value) {
  if (device_.is_cuda()) return cuda_fill(*this, value);
  void* base = storage_->data();
  if (dtype_ == DType::F32 && is_contiguous()) {
    float* p = data<float>();
    const float v = static_cast<float>(value);
    for (int64_t i = 0, n = numel(); i < n; ++i) p[i] = v;
    return;
  }
  for_each_offset(shape_, strides_, offset_, [&](int64_t o) { store_from_double(base, dtype_, o, value); });
}

double Tensor::item_at(const Shape& index) const {
  require_cpu(*this, "item_at");  // device values cross explicitly: t.to(Device::cpu())
  ANVIL_CHECK(index.size() == shape_.size(), "item_at", shape_str(index), " on ", describe());
  int64_t off = offset_;
  for (size_t i = 0; i < index.size(); ++i) {
    ANVIL_CHECK(index[i] >= 0 && index[i] < shape_[i], "item_at", shape_str(index), " out of range for ",
                describe());
    off += index[i] * strides_[i];
  }
  return load_as_double(storage_->data(), dtype_, off);
}

double Tensor::item() const {
  ANVIL_CHECK(numel() == 1, "item() needs a one-element tensor, got ", describe());
  return item_at(Shape(shape_.size(), 0));
}

std::vector<float> Tensor::to_vector() const {
  require_cpu(*this, "to_vector");
  std::vector<float> out;
  out.reserve(numel());
  const void* base = storage_->data();
  for_each_offset(shape_, strides_, offset_,
                  [&](int64_t o) { out.push_back(static_cast<float>(load_as_double(base, dtype_, o))); });
  return out;
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined tensor";
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + " " + device_.str();
}

Tensor empty_like(const Tensor& like, const Shape& shape) { return empty_like(like, shape, like.dtype()); }
Tensor empty_like(const Tensor& like, const Shape& shape, DType dtype) {
  ANVIL_CHECK(like.defined(), "empty_like", shape_str(shape), ": the tensor to take the device from is undefined");
  return Tensor::empty(shape, dtype, like.device());
}
Tensor zeros_like(const Tensor& like, const Shape& shape) { return zeros_like(like, shape, like.dtype()); }
Tensor zeros_like(const Tensor& like, const Shape& shape, DType dtype) {
  ANVIL_CHECK(like.defined(), "zeros_like", shape_str(shape), ": the tensor to take the device from is undefined");
  return Tensor::zeros(shape, dtype, like.device());
}

Tensor host_f32(const Tensor& t) {
  const Tensor host = t.to(Device::cpu());
  return host.dtype() == DType::F32 ? host : host.to(DType::F32);
}

void check_shape(const Tensor& t, const Shape& shape, const char* what) {
  ANVIL_CHECK(t.defined(), what, " is undefined; expected shape ", shape_str(shape));
  ANVIL_CHECK(t.shape() == shape, what, " has shape ", shape_str(t.shape()), ", expected ", shape_str(shape));
}

void check_dtype(const Tensor& t, DType dtype, const char* what) {
  ANVIL_CHECK(t.dtype() == dtype, what, " has dtype ", dtype_name(t.dtype()), ", expected ",
              dtype_name(dtype));
}

}  // namespace anvil
