#include "data/hdf5_util.h"

#include <vector>

namespace anvil {
namespace h5 {

Quiet::Quiet() {
  H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

Quiet::~Quiet() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }

namespace {
herr_t collect(unsigned n, const H5E_error2_t* err, void* out) {
  auto* descs = static_cast<std::vector<std::string>*>(out);
  if (err->desc && *err->desc) descs->emplace_back(err->desc);
  return 0;
}
}  // namespace

std::string error_text() {
  std::vector<std::string> descs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect, &descs);
  if (descs.empty()) return "no detail from HDF5";
  if (descs.size() == 1 || descs.front() == descs.back()) return descs.front();
  return descs.front() + ": " + descs.back();
}

void Context::fail(const std::string& what) const {
  if (fix.empty()) ANVIL_FAIL(prefix, " '", path, "': ", what);
  ANVIL_FAIL(prefix, " '", path, "': ", what, " — ", fix);
}

void Context::fail_h5(const std::string& what) const {
  ANVIL_FAIL(prefix, " '", path, "': ", what, " (HDF5: ", error_text(), ") — ", fix);
}

void write_attr_int(const Context& ctx, hid_t loc, const char* name, int64_t value) {
  Id space(ctx.check(H5Screate(H5S_SCALAR), "creating a dataspace"), H5Sclose);
  Id attr(ctx.check(H5Acreate2(loc, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                    std::string("creating attribute '") + name + "'"),
          H5Aclose);
  ctx.check_status(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value),
                   std::string("writing attribute '") + name + "'");
}

void write_attr_string(const Context& ctx, hid_t loc, const char* name, const std::string& value) {
  Id type(ctx.check(H5Tcopy(H5T_C_S1), "copying the string type"), H5Tclose);
  ctx.check_status(H5Tset_size(type.get(), value.empty() ? 1 : value.size()), "sizing a string type");
  ctx.check_status(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), "setting string padding");
  Id space(ctx.check(H5Screate(H5S_SCALAR), "creating a dataspace"), H5Sclose);
  Id attr(ctx.check(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                    std::string("creating attribute '") + name + "'"),
          H5Aclose);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  ctx.check_status(H5Awrite(attr.get(), type.get(), padded.data()),
                   std::string("writing attribute '") + name + "'");
}

bool has_attr(const Context& ctx, hid_t loc, const char* name) {
  const htri_t rc = H5Aexists(loc, name);
  if (rc < 0) ctx.fail_h5(std::string("looking up attribute '") + name + "'");
  return rc > 0;
}

namespace {
Id open_attr(const Context& ctx, hid_t loc, const char* name, H5T_class_t want, const char* kind) {
  if (!has_attr(ctx, loc, name)) ctx.fail(std::string("attribute '") + name + "' is missing");
  Id attr(ctx.check(H5Aopen(loc, name, H5P_DEFAULT), std::string("opening attribute '") + name + "'"),
          H5Aclose);
  Id space(ctx.check(H5Aget_space(attr.get()), "reading an attribute's dataspace"), H5Sclose);
  if (H5Sget_simple_extent_npoints(space.get()) != 1)
    ctx.fail(std::string("attribute '") + name + "' is not a single value");
  Id type(ctx.check(H5Aget_type(attr.get()), "reading an attribute's type"), H5Tclose);
  if (H5Tget_class(type.get()) != want)
    ctx.fail(std::string("attribute '") + name + "' is not " + kind);
  return attr;
}
}  // namespace

int64_t read_attr_int(const Context& ctx, hid_t loc, const char* name) {
  Id attr = open_attr(ctx, loc, name, H5T_INTEGER, "an integer");
  int64_t value = 0;
  ctx.check_status(H5Aread(attr.get(), H5T_NATIVE_INT64, &value),
                   std::string("reading attribute '") + name + "'");
  return value;
}

std::string read_attr_string(const Context& ctx, hid_t loc, const char* name) {
  Id attr = open_attr(ctx, loc, name, H5T_STRING, "a string");
  Id type(ctx.check(H5Aget_type(attr.get()), "reading an attribute's type"), H5Tclose);
  const std::string what = std::string("reading attribute '") + name + "'";
  const htri_t variable = H5Tis_variable_str(type.get());
  if (variable < 0) ctx.fail_h5(what);
  if (variable > 0) {
    Id mem(ctx.check(H5Tcopy(H5T_C_S1), what), H5Tclose);
    ctx.check_status(H5Tset_size(mem.get(), H5T_VARIABLE), what);
    char* raw = nullptr;
    ctx.check_status(H5Aread(attr.get(), mem.get(), &raw), what);
    std::string value = raw ? raw : "";
    H5free_memory(raw);
    return value;
  }
  const size_t size = H5Tget_size(type.get());
  if (size == 0) ctx.fail_h5(what);
  std::vector<char> buf(size + 1, '\0');
  ctx.check_status(H5Aread(attr.get(), type.get(), buf.data()), what);
  return std::string(buf.data());  // stops at the first NUL (null-padded or null-terminated)
}

}  // namespace h5
}  // namespace anvil
