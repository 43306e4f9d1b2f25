#include "trainer/load_model.h"

#include <filesystem>
#include <fstream>

#include "models/hf_convert.h"
#include "core/cuda_device.h"
#include "trainer/checkpoint.h"
#include "trainer/parallel_spec_rows.h"
#include "trainer/trainer.h"

namespace anvil {

namespace fs = std::filesystem;

std::string find_checkpoint_dir(const std::string& path) {
  std::error_code ec;
  ANVIL_CHECK(fs::exists(path, ec), "no such checkpoint or model directory: ", path, " — check the path");
  if (fs::is_regular_file(fs::path(path) / kCheckpointFile, ec)) return path;
  // A run directory or a checkpoint root: take the newest checkpoint under it.
  std::string found = latest_checkpoint((fs::path(path) / "checkpoints").string());
  if (found.empty()) found = latest_checkpoint(path);
  ANVIL_CHECK(!found.empty(), "no complete checkpoint in ", path,
              " — pass a checkpoint directory (…/checkpoints/step_N), a run directory, or a Hugging Face directory "
              "(config.json + model.safetensors)");
  return found;
}

RunConfig config_from_checkpoint(const std::string& path, const std::vector<std::string>& overrides) {
  const std::string dir = find_checkpoint_dir(path);
  const CheckpointMeta meta = read_checkpoint_meta(dir);
  std::vector<std::string> all = overrides;
  all.push_back("checkpoint.resume=" + dir);
  return parse_run_config(meta.run_config_yaml, dir + "/" + kCheckpointFile, dir, all);
}

namespace {
bool is_hf_dir(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(path) / "config.json", ec) &&
         !fs::is_regular_file(fs::path(path) / kCheckpointFile, ec);
}

// Built frozen: no gradient buffer is ever allocated, and no f32 master once moved to bf16.
std::unique_ptr<TransformerLM> build_frozen(const ModelConfig& config, const ModelLayout& layout) {
  FrozenParamScope frozen;
  return std::make_unique<TransformerLM>(config, layout);
}
}  // namespace

LoadedModel load_model(const std::string& path, const LoadModelOptions& options) {
  LoadedModel out;
  const bool from_hf = is_hf_dir(path);
  if (from_hf) {
    ANVIL_CHECK(options.overrides.empty(), path, " is a Hugging Face directory: it has no run config for --set to "
                "override — convert it first (`anvil convert --from-hf ", path, " --to DIR`) or drop --set");
    const ModelConfig mc = read_hf_config(path);
    out.model = build_frozen(mc, options.layout);
    load_hf_weights(*out.model, SafetensorsIndex::open(path));
    static_cast<ModelConfig&>(out.config.model) = mc;
    out.config.model.init_from = fs::absolute(path).lexically_normal().string();
    out.config.data.train = "none";
    const fs::path tokenizer = fs::path(path) / "tokenizer.json";
    std::error_code ec;
    if (fs::is_regular_file(tokenizer, ec)) out.config.tokenizer.path = fs::absolute(tokenizer).string();
    out.source = path;
  } else {
    out.source = find_checkpoint_dir(path);
    out.config = config_from_checkpoint(out.source, options.overrides);
    out.model = build_frozen(out.config.model, options.layout);
    if (const int64_t masks = parallel_spec_masks(out.config)) {  // a ParallelSpec drafter's mask tokens
      FrozenParamScope frozen;
      out.model->add_mask_embeddings(masks, 0);
    }
    CheckpointContents contents;
    contents.params = checkpoint_tensors(out.model->params());  // each param's shard under a split layout
    out.step = load_checkpoint(out.source, contents).step;
  }
  const Device device = options.device ? *options.device : from_hf ? Device::cpu() : training_device(out.config.run);
  const DType compute = options.compute ? *options.compute : from_hf ? DType::F32 : compute_dtype(out.config.run);
  if (device.is_cuda()) cuda_set_device(device.index);
  out.model->to(device, compute);
  return out;
}

}  // namespace anvil
