// Tensor: a view (dtype, shape, strides in elements, offset) onto shared storage.
// Views share storage and are cheap; copies are explicit (clone, contiguous, to).
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"

namespace anvil {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);
int64_t shape_numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);

// A block of device memory. Owned blocks return to their allocator; external
// blocks (e.g. a memory-mapped file) call their release function instead.
class Storage {
 public:
  Storage(size_t bytes, Device device);                                   // owned
  Storage(void* data, size_t bytes, Device device, std::function<void()> release);  // external
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  Allocator* allocator_ = nullptr;
  std::function<void()> release_;
};

class Tensor {
 public:
  Tensor() = default;  // undefined: holds no storage

  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32);
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
  static Tensor from_vector(const std::vector<int32_t>& values, const Shape& shape);
  // Wraps memory the tensor does not own; `release` runs when the last view goes.
  static Tensor from_external(void* data, const Shape& shape, DType dtype, Device device,
                              std::function<void()> release = {});

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const { return shape_[normalize_dim(d)]; }
  int64_t stride(int d) const { return strides_[normalize_dim(d)]; }
  int64_t offset() const { return offset_; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  void* raw_data() const;
  template <class T> T* data() const {
    ANVIL_CHECK(dtype_ == DTypeOf<T>::value, "tensor ", describe(), " accessed as ",
                dtype_name(DTypeOf<T>::value), " — convert it with .to(dtype) first");
    return static_cast<T*>(raw_data());
  }

  // Views (share storage).
  Tensor view(const Shape& shape) const;  // contiguous only; one dim may be -1
  Tensor slice(int d, int64_t start, int64_t end) const;
  Tensor select(int d, int64_t index) const;  // drops dim d
  Tensor transpose(int a, int b) const;
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset) const;

  // Copies.
  Tensor contiguous() const;  // this tensor when already contiguous
  Tensor clone() const;
  Tensor to(DType dtype) const;
  // A copy on `device` (this tensor itself when already there). The one way data crosses
  // devices, besides copy_ between tensors on different devices; device->host blocks.
  Tensor to(Device device) const;
  void copy_(const Tensor& src);  // same shape; converts dtype; any strides; any devices
  void fill_(double value);
  void zero_() { fill_(0.0); }

  // Element access for tests and small host-side code (not for kernels); CPU tensors only.
  double item_at(const Shape& index) const;
  double item() const;
  std::vector<float> to_vector() const;  // logical order, as f32

  bool same_storage(const Tensor& other) const { return storage_ == other.storage_; }
  std::string describe() const;  // e.g. "f32[2, 3] cpu"

 private:
  int normalize_dim(int d) const;
  std::shared_ptr<Storage> storage_;
  DType dtype_ = DType::F32;
  Device device_;
  Shape shape_;
  Shape strides_;
  int64_t offset_ = 0;
};

// Buffers derived from another tensor (activations, gradients, scratch): on like's device and in
// like's dtype unless `dtype` says otherwise, so code written once follows its inputs to the GPU
// and into bf16. Uninitialised (empty_like) or zero-filled (zeros_like).
Tensor empty_like(const Tensor& like, const Shape& shape);
Tensor empty_like(const Tensor& like, const Shape& shape, DType dtype);
Tensor zeros_like(const Tensor& like, const Shape& shape);
Tensor zeros_like(const Tensor& like, const Shape& shape, DType dtype);

// t as f32 on the host, for host code that reads values (checkpoints, sampling, exports): t
// itself when it already is one, else an explicit copy (device -> host blocks).
Tensor host_f32(const Tensor& t);

// Throws an Error naming `what` when `t` does not have exactly `shape`.
void check_shape(const Tensor& t, const Shape& shape, const char* what);
void check_dtype(const Tensor& t, DType dtype, const char* what);

}  // namespace anvil
