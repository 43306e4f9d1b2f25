// Small serial-HDF5 helpers for data/ (internal): RAII ids, a guard that silences
// HDF5's default stderr dump, and checks that turn a failed call into an
// anvil::Error naming the file, the operation and HDF5's own explanation.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <utility>

#include "core/error.h"

namespace anvil {
namespace h5 {

// Owns one HDF5 id and closes it with the matching H5?close.
class Id {
 public:
  using Closer = herr_t (*)(hid_t);
  Id() = default;
  Id(hid_t id, Closer close) : id_(id), close_(close) {}
  ~Id() { reset(); }
  Id(Id&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), close_(o.close_) {}
  Id& operator=(Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      close_ = o.close_;
    }
    return *this;
  }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = H5I_INVALID_HID;
  }
  // Closes now and reports whether the close succeeded (a file close flushes).
  bool close() {
    if (id_ < 0) return true;
    const herr_t rc = close_ ? close_(id_) : 0;
    id_ = H5I_INVALID_HID;
    return rc >= 0;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

// While alive, HDF5 prints nothing; the previous handler comes back afterwards.
class Quiet {
 public:
  Quiet();
  ~Quiet();
  Quiet(const Quiet&) = delete;
  Quiet& operator=(const Quiet&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The descriptions on HDF5's error stack after a failed call (outermost and innermost).
std::string error_text();

// Formats errors for one file: "<prefix> '<path>': <what> (HDF5: ...) — <fix>".
struct Context {
  std::string prefix;  // e.g. "token store"
  std::string path;
  std::string fix;     // how to fix a failure of this kind (empty: `what` already says)

  [[noreturn]] void fail(const std::string& what) const;
  [[noreturn]] void fail_h5(const std::string& what) const;  // appends error_text()
  hid_t check(hid_t id, const std::string& what) const {
    if (id < 0) fail_h5(what);
    return id;
  }
  void check_status(herr_t rc, const std::string& what) const {
    if (rc < 0) fail_h5(what);
  }
};

// Attribute helpers on a file or group. Integers are stored as 64-bit signed,
// strings as fixed-length C strings; readers accept any integer width and both
// fixed and variable-length strings (as h5py writes them).
void write_attr_int(const Context& ctx, hid_t loc, const char* name, int64_t value);
void write_attr_string(const Context& ctx, hid_t loc, const char* name, const std::string& value);
bool has_attr(const Context& ctx, hid_t loc, const char* name);
int64_t read_attr_int(const Context& ctx, hid_t loc, const char* name);
std::string read_attr_string(const Context& ctx, hid_t loc, const char* name);

}  // namespace h5
}  // namespace anvil
