#include "trainer/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>

#include <sstream>

#include "core/checksum.h"
#include "data/hdf5_util.h"
#include "parallel/collectives.h"
#include "parallel/mpi_communicator.h"

namespace anvil {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kFormatVersion = 1;
constexpr const char* kFix = "pick another checkpoint (or remove this one) and resume again";
constexpr const char* kChecksumAttr = "crc32c";  // of the tensor's f32 bytes (integer tensors: widened to f32)

// How a tensor is stored: float tensors (f32, bf16) as f32; integer tensors (a quantized
// weight's packed values, its zero points) exactly, in their own type.
DType stored_dtype(const Tensor& t) { return dtype_is_float(t.dtype()) ? DType::F32 : t.dtype(); }
hid_t file_type(DType dt) {
  switch (dt) {
    case DType::I32: return H5T_STD_I32LE;
    case DType::I64: return H5T_STD_I64LE;
    case DType::I8: return H5T_STD_I8LE;
    case DType::U8: return H5T_STD_U8LE;
    default: return H5T_IEEE_F32LE;
  }
}
hid_t memory_type(DType dt) {
  switch (dt) {
    case DType::I32: return H5T_NATIVE_INT32;
    case DType::I64: return H5T_NATIVE_INT64;
    case DType::I8: return H5T_NATIVE_INT8;
    case DType::U8: return H5T_NATIVE_UINT8;
    default: return H5T_NATIVE_FLOAT;
  }
}
// The checksum of a host tensor in stored_dtype: of its f32 bytes, as for_each_tensor reads them.
uint32_t checksum_of(const Tensor& t) {
  const Tensor f = t.dtype() == DType::F32 ? t : t.to(DType::F32);
  return crc32c(f.raw_data(), f.nbytes());
}

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

h5::Id create_group(const h5::Context& ctx, hid_t loc, const char* name) {
  return h5::Id(ctx.check(H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), std::string("create group ") + name),
                H5Gclose);
}

// The hyperslabs of a tensor: one block per combination of runs, one run from each split
// (each split dim restricted to its run, every other dim whole), or the whole tensor. For
// each: where it starts in the local tensor and in the logical one, and its extent.
struct Slab {
  std::vector<hsize_t> local_start, logical_start, count;
};
std::vector<Slab> slabs_of(const CheckpointTensor& t) {
  const Shape& shape = t.local.shape();
  const size_t rank = shape.size();
  Slab whole{std::vector<hsize_t>(rank, 0), std::vector<hsize_t>(rank, 0), std::vector<hsize_t>(shape.begin(), shape.end())};
  std::vector<Slab> out{whole};
  for (const ShardSplit& split : t.shard.splits) {
    std::vector<Slab> refined;
    for (const Slab& slab : out)
      for (const ShardRun& run : split.runs) {
        Slab s = slab;
        s.local_start[split.dim] = static_cast<hsize_t>(run.local_start);
        s.logical_start[split.dim] = static_cast<hsize_t>(run.global_start);
        s.count[split.dim] = static_cast<hsize_t>(run.length);
        refined.push_back(std::move(s));
      }
    out = std::move(refined);
  }
  return out;
}

// Selects `start`/`count` in a fresh copy of `space` (a scalar tensor selects everything).
h5::Id select(const h5::Context& ctx, hid_t space, const std::vector<hsize_t>& start,
              const std::vector<hsize_t>& count, const std::string& name) {
  h5::Id s(ctx.check(H5Scopy(space), "dataspace of " + name), H5Sclose);
  if (!start.empty())
    ctx.check_status(H5Sselect_hyperslab(s.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr),
                     "select a slab of " + name);
  return s;
}

h5::Id simple_space(const h5::Context& ctx, const Shape& shape, const std::string& name) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  return h5::Id(ctx.check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), "dataspace for " + name),
                H5Sclose);
}

void write_slabs(const h5::Context& ctx, hid_t set, const CheckpointTensor& t) {
  // What HDF5 reads: contiguous, on the host, f32 (device tensors cross here; bf16 widens
  // exactly) or an integer type as it is.
  ANVIL_CHECK(t.local.dtype() == DType::F32 || t.local.dtype() == DType::BF16 || !dtype_is_float(t.local.dtype()),
              "checkpoint: ", t.name, " is ", t.local.describe(),
              "; only f32 (or bf16, stored as f32) and integer tensors are saved");
  const DType dt = stored_dtype(t.local);
  const Tensor c = dt == DType::F32 ? host_f32(t.local).contiguous() : t.local.to(Device::cpu()).contiguous();
  if (c.numel() == 0) return;
  const h5::Id mem = simple_space(ctx, c.shape(), t.name);
  h5::Id file(ctx.check(H5Dget_space(set), "dataspace of " + t.name), H5Sclose);
  for (const Slab& slab : slabs_of(t)) {
    const h5::Id m = select(ctx, mem.get(), slab.local_start, slab.count, t.name);
    const h5::Id f = select(ctx, file.get(), slab.logical_start, slab.count, t.name);
    ctx.check_status(H5Dwrite(set, memory_type(dt), m.get(), f.get(), H5P_DEFAULT, c.raw_data()), "write " + t.name);
  }
}

// Errors about what a tensor holds carry their own fix, so they use a context without one.
void read_slabs(const h5::Context& file_ctx, hid_t group, CheckpointTensor& t, const char* kind) {
  const h5::Context ctx{file_ctx.prefix, file_ctx.path, ""};
  const std::string& name = t.name;
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
  if (shape != t.logical())
    ctx.fail(std::string(kind) + " '" + name + "' has shape " + shape_str(shape) + " but the model expects " +
             shape_str(t.logical()) + " — the checkpoint comes from a different model shape; fix model.* " +
             (dtype_is_float(t.local.dtype()) && name.find(".weight.") == std::string::npos ? "" : "(or quant.scheme / quant.block, for a quantized weight) ") +
             "in the config to match it, or start a fresh run (checkpoint.resume: none)");
  h5::Id type(file_ctx.check(H5Dget_type(set.get()), "type of " + name), H5Tclose);
  const DType dt = stored_dtype(t.local);
  if (H5Tget_class(type.get()) != (dt == DType::F32 ? H5T_FLOAT : H5T_INTEGER))
    ctx.fail(std::string(kind) + " '" + name + "' is not " +
             (dt == DType::F32 ? "floating point" : std::string("an integer tensor (the model holds ") +
                                                        dtype_name(dt) + ")"));
  // Read in place when the tensor is on the host, contiguous and in its stored dtype; otherwise through a host buffer.
  const bool in_place = t.local.is_contiguous() && t.local.device().is_cpu() && t.local.dtype() == dt;
  Tensor buf = in_place ? t.local : Tensor::empty(t.local.shape(), dt);
  if (buf.numel() == 0) return;
  const h5::Id mem = simple_space(file_ctx, buf.shape(), name);
  for (const Slab& slab : slabs_of(t)) {
    const h5::Id m = select(file_ctx, mem.get(), slab.local_start, slab.count, name);
    const h5::Id f = select(file_ctx, space.get(), slab.logical_start, slab.count, name);
    file_ctx.check_status(H5Dread(set.get(), memory_type(dt), m.get(), f.get(), H5P_DEFAULT, buf.raw_data()),
                          "read " + name);
  }
  // A whole tensor is checked against its checksum here; a shard's slice cannot be (latest_checkpoint verifies whole files).
  if (!t.shard.sharded() && h5::has_attr(file_ctx, set.get(), kChecksumAttr) &&
      h5::read_attr_int(file_ctx, set.get(), kChecksumAttr) != static_cast<int64_t>(checksum_of(buf)))
    ctx.fail(std::string(kind) + " '" + name + "' does not match its checksum — the file is corrupted; " + kFix);
  if (!buf.same_storage(t.local)) t.local.copy_(buf);
}

// Every tensor name, logical shape and stored dtype any rank holds, in one sorted catalog identical
// on every rank (parallel HDF5 creates datasets collectively, so all ranks need all of them).
using Catalog = std::map<std::pair<int, std::string>, std::pair<Shape, DType>>;  // (0 params | 1 optimizer, name)
Catalog gather_catalog(const CheckpointContents& contents, Communicator* world) {
  std::string mine;
  for (int g = 0; g < 2; ++g)
    for (const CheckpointTensor& t : g == 0 ? contents.params : contents.optimizer) {
      mine += std::to_string(g) + '\t' + t.name + '\t';
      for (int64_t d : t.logical()) mine += std::to_string(d) + ',';
      mine += std::string("|") + dtype_name(stored_dtype(t.local)) + '\n';
    }
  const std::vector<std::string> texts = world ? all_gather_strings(*world, mine) : std::vector<std::string>{mine};
  Catalog catalog;
  for (size_t r = 0; r < texts.size(); ++r) {
    std::istringstream lines(texts[r]);
    std::string line;
    while (std::getline(lines, line)) {
      const size_t a = line.find('\t'), b = line.rfind('\t');
      const int group = std::stoi(line.substr(0, a));
      const std::string name = line.substr(a + 1, b - a - 1);
      const size_t bar = line.rfind('|');
      const DType dtype = dtype_from_name(line.substr(bar + 1));
      Shape shape;
      std::istringstream dims(line.substr(b + 1, bar - b - 1));
      std::string d;
      while (std::getline(dims, d, ',')) shape.push_back(std::stoll(d));
      const auto [it, added] = catalog.emplace(std::make_pair(group, name), std::make_pair(shape, dtype));
      ANVIL_CHECK(added || it->second == std::make_pair(shape, dtype), "checkpoint: rank ", r, " holds '", name,
                  "' with logical shape ", shape_str(shape), " (", dtype_name(dtype), ") but another rank has ",
                  shape_str(it->second.first), " (", dtype_name(it->second.second), ")",
                  " — the ranks disagree on the model; every rank must build it from the same config");
    }
  }
  return catalog;
}

// Reads every tensor of group `name` whole and hands it to `visit` with its dataset.
void for_each_tensor(const h5::Context& ctx, hid_t file, const char* name,
                     const std::function<void(const std::string&, hid_t, const std::vector<float>&)>& visit) {
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
    visit(n, set.get(), data);
  }
}

uint32_t checksum_of(const std::vector<float>& data) { return crc32c(data.data(), data.size() * sizeof(float)); }

// Reads every tensor of group `name` and checks it against its checksum.
void verify_group(const h5::Context& ctx, hid_t file, const char* name) {
  for_each_tensor(ctx, file, name, [&](const std::string& n, hid_t set, const std::vector<float>& data) {
    if (h5::has_attr(ctx, set, kChecksumAttr) &&
        h5::read_attr_int(ctx, set, kChecksumAttr) != static_cast<int64_t>(checksum_of(data)))
      ctx.fail(std::string(name) + "/" + n + " does not match its checksum (corrupted)");
  });
}

// HDF5 checksums its metadata but not raw data, so damaged bytes must be caught by our own
// CRC. The ranks wrote slabs of each tensor; the lead reads the finished file back and
// records each whole tensor's checksum (this also proves every slab landed and reads back).
void add_checksums(const std::string& path) {
  h5::Quiet quiet;
  const h5::Context ctx{"checkpoint", path, "check free disk space and write permission in checkpoint.dir"};
  h5::Id file(ctx.check(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), "reopen to checksum"), H5Fclose);
  for (const char* group : {"params", "optimizer"})
    for_each_tensor(ctx, file.get(), group, [&](const std::string&, hid_t set, const std::vector<float>& data) {
      h5::write_attr_int(ctx, set, kChecksumAttr, checksum_of(data));
    });
  if (!file.close()) ctx.fail("close failed (disk full?)");
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

Shape CheckpointTensor::logical() const {
  return logical_shape(shard, local.shape());
}

std::vector<CheckpointTensor> checkpoint_tensors(const std::vector<Param*>& params) {
  std::vector<CheckpointTensor> out;
  for (const Param* p : params) out.push_back({p->name, master_weight(*p), p->shard, true});
  return out;
}

std::string save_checkpoint(const std::string& root, const CheckpointMeta& meta, const std::vector<Param*>& params,
                            Optimizer* optimizer, int64_t keep) {
  CheckpointContents contents;
  contents.params = checkpoint_tensors(params);
  CheckpointMeta named = meta;
  named.optimizer_name = optimizer ? optimizer->name() : "";
  if (optimizer)
    for (const NamedTensor& t : optimizer->state()) contents.optimizer.push_back({t.name, t.tensor, {}, true});
  return save_checkpoint(root, named, contents, keep);
}

std::string save_checkpoint(const std::string& root, const CheckpointMeta& meta, const CheckpointContents& contents,
                            int64_t keep, Communicator* world) {
  if (world && world->size() == 1) world = nullptr;
  const bool lead = !world || world->rank() == 0;
  const bool has_optimizer = !meta.optimizer_name.empty();
  if (world) {  // a collective file: every rank must name the same one, or MPI-IO would wait forever
    const std::vector<std::string> roots = all_gather_strings(*world, fs::absolute(root).lexically_normal().string());
    for (size_t r = 1; r < roots.size(); ++r)
      ANVIL_CHECK(roots[r] == roots[0], "checkpoint: the ranks save into different directories (rank 0: ", roots[0],
                  ", rank ", r, ": ", roots[r], ") — checkpoint.dir must name one directory shared by the whole job");
  }
  const Catalog catalog = gather_catalog(contents, world);
  const std::string name = step_dir_name(meta.step);
  const fs::path final_dir = fs::path(root) / name;
  const fs::path temp_dir = fs::path(root) / ("." + name + ".tmp");
  if (lead) {
    fs::create_directories(root);
    fs::remove_all(temp_dir);
    fs::create_directories(temp_dir);
  }
  if (world) world->barrier();
  const std::string path = (temp_dir / kCheckpointFile).string();
  {
    h5::Quiet quiet;
    const h5::Context ctx{"checkpoint", path, "check free disk space and write permission in checkpoint.dir"};
    h5::Id access(ctx.check(H5Pcreate(H5P_FILE_ACCESS), "file access list"), H5Pclose);
    if (world) {
      auto* mpi = dynamic_cast<MpiCommunicator*>(&world->backend());
      ANVIL_CHECK(mpi != nullptr, "checkpoint: parallel HDF5 needs the MPI communicator of the job (MPI-IO); "
                  "pass the MPI world (or a wrapper of it), not another backend");
      ctx.check_status(H5Pset_fapl_mpio(access.get(), mpi->handle(), MPI_INFO_NULL), "use MPI-IO");
    }
    // Collective from here on: every rank creates the same groups, datasets and attributes.
    h5::Id file(ctx.check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access.get()), "create"), H5Fclose);
    std::map<std::pair<int, std::string>, h5::Id> sets;
    {
      h5::Id groups[2] = {create_group(ctx, file.get(), "params"),
                          has_optimizer ? create_group(ctx, file.get(), "optimizer") : h5::Id()};
      for (const auto& [key, layout] : catalog) {
        const auto& [shape, dtype] = layout;
        if (key.first == 1 && !has_optimizer) continue;
        const h5::Id space = simple_space(ctx, shape, key.second);
        sets.emplace(key, h5::Id(ctx.check(H5Dcreate2(groups[key.first].get(), key.second.c_str(), file_type(dtype),
                                                      space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                                           "create dataset " + key.second),
                                 H5Dclose));
      }
    }
    // Independent from here: each rank writes the hyperslabs it owns.
    for (int g = 0; g < (has_optimizer ? 2 : 1); ++g)
      for (const CheckpointTensor& t : g == 0 ? contents.params : contents.optimizer)
        if (t.writer) write_slabs(ctx, sets.at({g, t.name}).get(), t);
    sets.clear();
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
  if (world) world->barrier();  // every rank's slabs are in the file before it is checksummed
  if (lead) {
    add_checksums(path);
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
  }
  if (world) world->barrier();  // nobody looks for the checkpoint before it has its final name
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

CheckpointMeta load_checkpoint(const std::string& dir, CheckpointContents& contents,
                               const std::string& optimizer_name) {
  auto f = open_checkpoint(dir);
  CheckpointMeta meta = read_meta(f->ctx, f->file.get());
  {
    h5::Id group(f->ctx.check(H5Gopen2(f->file.get(), "params", H5P_DEFAULT), "open group params"), H5Gclose);
    for (CheckpointTensor& t : contents.params) read_slabs(f->ctx, group.get(), t, "parameter");
  }
  if (!contents.optimizer.empty()) {
    if (meta.optimizer_name != optimizer_name)
      f->ctx.fail("it holds " + (meta.optimizer_name.empty() ? std::string("no optimizer") : meta.optimizer_name) +
                  " state but the run uses " + optimizer_name +
                  " — resume with the same optimizer, or start fresh (checkpoint.resume: none)");
    h5::Id group(f->ctx.check(H5Gopen2(f->file.get(), "optimizer", H5P_DEFAULT), "open group optimizer"), H5Gclose);
    for (CheckpointTensor& t : contents.optimizer) read_slabs(f->ctx, group.get(), t, "optimizer state");
  }
  return meta;
}

CheckpointMeta load_checkpoint(const std::string& dir, const std::vector<Param*>& params, Optimizer* optimizer) {
  CheckpointContents contents;
  contents.params = checkpoint_tensors(params);
  std::vector<NamedTensor> state;
  if (optimizer) state = optimizer->state();
  for (const NamedTensor& t : state) contents.optimizer.push_back({t.name, t.tensor, {}, true});
  const CheckpointMeta meta = load_checkpoint(dir, contents, optimizer ? optimizer->name() : "");
  refresh_values(params);  // mixed precision: the masters were loaded; the compute copies follow
  if (optimizer) optimizer->load_state(state);
  return meta;
}

}  // namespace anvil
