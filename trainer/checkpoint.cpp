#include "trainer/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "core/checksum.h"
#include "data/hdf5_util.h"

namespace anvil {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kFormatVersion = 1;
constexpr const char* kFix = "pick another checkpoint (or remove this one) and resume again";
constexpr const char* kChecksumAttr = "crc32c";  // of the tensor's f32 bytes

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

h5::Id create_group(const h5::Context& ctx, hid_t loc, const char* name) {
  return h5::Id(ctx.check(H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), std::string("create group ") + name),
                H5Gclose);
}

void write_tensor(const h5::Context& ctx, hid_t group, const std::string& name, const Tensor& t) {
  const Tensor c = t.contiguous();
  ANVIL_CHECK(c.dtype() == DType::F32, "checkpoint: ", name, " is ", c.describe(), "; only f32 is stored");
  std::vector<hsize_t> dims(c.shape().begin(), c.shape().end());
  h5::Id space(ctx.check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), "dataspace for " + name),
               H5Sclose);
  h5::Id set(ctx.check(H5Dcreate2(group, name.c_str(), H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                                  H5P_DEFAULT),
                       "create dataset " + name),
             H5Dclose);
  if (c.numel() > 0)
    ctx.check_status(H5Dwrite(set.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.raw_data()),
                     "write " + name);
  // HDF5 checksums its metadata but not raw data: damaged bytes must not load silently.
  h5::write_attr_int(ctx, set.get(), kChecksumAttr, crc32c(c.raw_data(), c.nbytes()));
}

// Errors about what a tensor holds carry their own fix, so they use a context without one.
void read_tensor(const h5::Context& file_ctx, hid_t group, const std::string& name, Tensor& into, const char* kind) {
  const h5::Context ctx{file_ctx.prefix, file_ctx.path, ""};
  if (H5Lexists(group, name.c_str(), H5P_DEFAULT) <= 0)
    ctx.fail(std::string(kind) + " '" + name + "' is missing — the checkpoint was saved from a different model or "
             "trainable set; start a fresh run or resume from a matching checkpoint");
  h5::Id set(file_ctx.check(H5Dopen2(group, name.c_str(), H5P_DEFAULT), "open " + name), H5Dclose);
  h5::Id space(file_ctx.check(H5Dget_space(set.get()), "dataspace of " + name), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0 || rank > 8) ctx.fail(std::string(kind) + " '" + name + "' has an invalid rank");
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  const Shape shape(dims.begin(), dims.end());
  if (shape != into.shape())
    ctx.fail(std::string(kind) + " '" + name + "' has shape " + shape_str(shape) + " but the model expects " +
             shape_str(into.shape()) + " — the checkpoint comes from a different model shape; fix model.* in the "
             "config to match it, or start a fresh run (checkpoint.resume: none)");
  h5::Id type(file_ctx.check(H5Dget_type(set.get()), "type of " + name), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_FLOAT) ctx.fail(std::string(kind) + " '" + name + "' is not floating point");
  Tensor buf = into.is_contiguous() ? into : Tensor::empty(into.shape());
  if (buf.numel() > 0)
    file_ctx.check_status(H5Dread(set.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.raw_data()),
                     "read " + name);
  if (h5::has_attr(file_ctx, set.get(), kChecksumAttr) &&
      h5::read_attr_int(file_ctx, set.get(), kChecksumAttr) != static_cast<int64_t>(crc32c(buf.raw_data(), buf.nbytes())))
    ctx.fail(std::string(kind) + " '" + name + "' does not match its checksum — the file is corrupted; " + kFix);
  if (!buf.same_storage(into)) into.copy_(buf);
}

// Reads every tensor of group `name` and checks it against its checksum.
void verify_group(const h5::Context& ctx, hid_t file, const char* name) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) return;
  h5::Id group(ctx.check(H5Gopen2(file, name, H5P_DEFAULT), std::string("open group ") + name), H5Gclose);
  std::vector<std::string> names;
  auto collect = [](hid_t, const char* n, const H5L_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->push_back(n);
    return 0;
  };
  ctx.check_status(H5Literate(group.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect, &names),
                   std::string("list ") + name);
  for (const std::string& n : names) {
    h5::Id set(ctx.check(H5Dopen2(group.get(), n.c_str(), H5P_DEFAULT), "open " + n), H5Dclose);
    h5::Id space(ctx.check(H5Dget_space(set.get()), "dataspace of " + n), H5Sclose);
    const hssize_t count = H5Sget_simple_extent_npoints(space.get());
    if (count < 0) ctx.fail("'" + n + "' has an invalid shape");
    std::vector<float> data(static_cast<size_t>(count));
    if (count > 0)
      ctx.check_status(H5Dread(set.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), "read " + n);
    if (h5::has_attr(ctx, set.get(), kChecksumAttr) &&
        h5::read_attr_int(ctx, set.get(), kChecksumAttr) !=
            static_cast<int64_t>(crc32c(data.data(), data.size() * sizeof(float))))
      ctx.fail(std::string(name) + "/" + n + " does not match its checksum (corrupted)");
  }
}

CheckpointMeta read_meta(const h5::Context& ctx, hid_t file) {
  if (!h5::has_attr(ctx, file, "complete") || h5::read_attr_int(ctx, file, "complete") != 1)
    ctx.fail("it was never completed");
  const int64_t version = h5::read_attr_int(ctx, file, "format_version");
  if (version != kFormatVersion)
    ctx.fail("format_version " + std::to_string(version) + " is not supported (this build reads " +
             std::to_string(kFormatVersion) + ")");
  CheckpointMeta meta;
  meta.step = h5::read_attr_int(ctx, file, "step");
  meta.run_config_yaml = h5::read_attr_string(ctx, file, "run_config");
  meta.model_config_json = h5::read_attr_string(ctx, file, "model_config");
  meta.optimizer_name = h5::read_attr_string(ctx, file, "optimizer_name");
  h5::Id state(ctx.check(H5Gopen2(file, "state", H5P_DEFAULT), "open group state"), H5Gclose);
  std::vector<std::string> names;
  auto collect = [](hid_t, const char* name, const H5A_info_t*, void* out) -> herr_t {
    static_cast<std::vector<std::string>*>(out)->push_back(name);
    return 0;
  };
  ctx.check_status(H5Aiterate2(state.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect, &names),
                   "list state counters");
  for (const std::string& name : names) meta.counters[name] = h5::read_attr_int(ctx, state.get(), name.c_str());
  return meta;
}

struct OpenFile {
  h5::Quiet quiet;
  h5::Context ctx;
  h5::Id file;
};

std::unique_ptr<OpenFile> open_checkpoint(const std::string& dir) {
  auto f = std::make_unique<OpenFile>();
  const std::string path = (fs::path(dir) / kCheckpointFile).string();
  f->ctx = {"checkpoint", path, kFix};
  if (!fs::exists(path)) f->ctx.fail("no such file");
  f->file = h5::Id(f->ctx.check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "open (not an HDF5 file?)"),
                   H5Fclose);
  return f;
}

}  // namespace

std::string save_checkpoint(const std::string& root, const CheckpointMeta& meta, const std::vector<Param*>& params,
                            Optimizer* optimizer, int64_t keep) {
  if (!optimizer) {
    CheckpointMeta plain = meta;
    plain.optimizer_name.clear();
    return save_checkpoint(root, plain, params, std::vector<NamedTensor>{}, keep);
  }
  CheckpointMeta named = meta;
  named.optimizer_name = optimizer->name();
  return save_checkpoint(root, named, params, optimizer->state(), keep);
}

std::string save_checkpoint(const std::string& root, const CheckpointMeta& meta, const std::vector<Param*>& params,
                            const std::vector<NamedTensor>& optimizer_state, int64_t keep) {
  const bool has_optimizer = !meta.optimizer_name.empty();
  fs::create_directories(root);
  const std::string name = step_dir_name(meta.step);
  const fs::path final_dir = fs::path(root) / name;
  const fs::path temp_dir = fs::path(root) / ("." + name + ".tmp");
  fs::remove_all(temp_dir);
  fs::create_directories(temp_dir);
  const std::string path = (temp_dir / kCheckpointFile).string();
  {
    h5::Quiet quiet;
    const h5::Context ctx{"checkpoint", path, "check free disk space and write permission in checkpoint.dir"};
    h5::Id file(ctx.check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), "create"), H5Fclose);
    {
      h5::Id group = create_group(ctx, file.get(), "params");
      for (const Param* p : params) write_tensor(ctx, group.get(), p->name, p->value);
    }
    if (has_optimizer) {
      h5::Id group = create_group(ctx, file.get(), "optimizer");
      for (const NamedTensor& t : optimizer_state) write_tensor(ctx, group.get(), t.name, t.tensor);
    }
    {
      h5::Id state = create_group(ctx, file.get(), "state");
      for (const auto& [key, value] : meta.counters) h5::write_attr_int(ctx, state.get(), key.c_str(), value);
    }
    h5::write_attr_int(ctx, file.get(), "format_version", kFormatVersion);
    h5::write_attr_int(ctx, file.get(), "step", meta.step);
    h5::write_attr_string(ctx, file.get(), "run_config", meta.run_config_yaml);
    h5::write_attr_string(ctx, file.get(), "model_config", meta.model_config_json);
    h5::write_attr_string(ctx, file.get(), "optimizer_name", meta.optimizer_name);
    h5::write_attr_int(ctx, file.get(), "complete", 1);  // last: a file without it was cut short
    ctx.check_status(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), "flush");
    if (!file.close()) ctx.fail("close failed (disk full?)");
  }
  fs::remove_all(final_dir);  // a re-save of the same step replaces it
  fs::rename(temp_dir, final_dir);
  if (keep > 0) {
    std::vector<fs::path> steps;
    for (const auto& entry : fs::directory_iterator(root)) {
      const std::string n = entry.path().filename().string();
      if (entry.is_directory() && n.rfind("step_", 0) == 0) steps.push_back(entry.path());
    }
    std::sort(steps.begin(), steps.end());
    for (size_t i = 0; i + keep < steps.size(); ++i) fs::remove_all(steps[i]);
  }
  return final_dir.string();
}

std::string latest_checkpoint(const std::string& root) {
  if (!fs::is_directory(root)) return "";
  std::vector<fs::path> steps;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string n = entry.path().filename().string();
    if (entry.is_directory() && n.rfind("step_", 0) == 0) steps.push_back(entry.path());
  }
  std::sort(steps.rbegin(), steps.rend());
  for (const fs::path& dir : steps) {
    try {
      auto f = open_checkpoint(dir.string());
      read_meta(f->ctx, f->file.get());
      // Every tensor read back and checked: a checkpoint that would fail to load is skipped here.
      verify_group(f->ctx, f->file.get(), "params");
      verify_group(f->ctx, f->file.get(), "optimizer");
      return dir.string();
    } catch (const Error& e) {
      std::fprintf(stderr, "warning: skipping checkpoint %s: %s\n", dir.string().c_str(), e.what());
    }
  }
  return "";
}

CheckpointMeta read_checkpoint_meta(const std::string& dir) {
  auto f = open_checkpoint(dir);
  return read_meta(f->ctx, f->file.get());
}

CheckpointMeta load_checkpoint(const std::string& dir, const std::vector<Param*>& params, Optimizer* optimizer) {
  auto f = open_checkpoint(dir);
  CheckpointMeta meta = read_meta(f->ctx, f->file.get());
  {
    h5::Id group(f->ctx.check(H5Gopen2(f->file.get(), "params", H5P_DEFAULT), "open group params"), H5Gclose);
    for (Param* p : params) read_tensor(f->ctx, group.get(), p->name, p->value, "parameter");
  }
  if (optimizer) {
    if (meta.optimizer_name != optimizer->name())
      f->ctx.fail("it holds " + meta.optimizer_name + " state but the run uses " + optimizer->name() +
                  " — resume with the same optimizer, or start fresh (checkpoint.resume: none)");
    h5::Id group(f->ctx.check(H5Gopen2(f->file.get(), "optimizer", H5P_DEFAULT), "open group optimizer"), H5Gclose);
    std::vector<NamedTensor> state = optimizer->state();
    for (NamedTensor& t : state) read_tensor(f->ctx, group.get(), t.name, t.tensor, "optimizer state");
    optimizer->load_state(state);
  }
  return meta;
}

}  // namespace anvil
