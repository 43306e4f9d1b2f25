#include "trainer/quant_export.h"

#include <algorithm>
#include <filesystem>
#include <map>

#include "core/rng.h"
#include "data/tokenizer.h"
#include "models/hf_quant.h"
#include "models/linear_weight.h"
#include "models/lora_merge.h"
#include "trainer/checkpoint.h"
#include "trainer/load_model.h"
#include "trainer/lora.h"

namespace anvil {
namespace fs = std::filesystem;

namespace {
// A LoRA run's stored config; only the model matters here (the training data may be long gone).
RunConfig lora_run_config(const std::string& dir) {
  RunConfig cfg = config_from_checkpoint(dir, {"data.train=none"});
  ANVIL_CHECK(cfg.lora.enabled(), dir, ": not a LoRA run (its lora.modules is empty) — export a full run "
              "with `anvil convert --from RUN --to hf DIR`");
  return cfg;
}
}  // namespace

LoadedModel load_lora_run(const std::string& path) {
  lora_run_config(find_checkpoint_dir(path));  // a clear error for a run without adapters
  LoadModelOptions options;
  options.device = Device::cpu();
  options.compute = DType::F32;
  options.overrides = {"data.train=none"};
  return load_model(path, options);
}

QaLoraExport export_qa_lora_merged(const std::string& run, const std::string& hf_dir, bool naive) {
  const std::string source = find_checkpoint_dir(run);
  const RunConfig checked = lora_run_config(source);  // what cannot merge is refused before anything loads
  ANVIL_CHECK(checked.quant.scheme != "nf4", source, ": a QLoRA (nf4) adapter cannot be merged into its 4-bit base "
              "exactly — nf4 has no zero points to absorb it, and requantizing loses part of what the adapter learned; "
              "not possible exactly: use `anvil convert --from RUN --to hf DIR --merge` for a dense model");
  ANVIL_CHECK(checked.lora.qa_group > 0, source, ": a plain LoRA adapter (lora.qa_group 0) changes the weights within "
              "a quantization group differently, so it cannot fold into the zero points — train QA-LoRA "
              "(lora.qa_group = quant.block, an int4/int2 base), or use `--to hf DIR --merge` for a dense model");
  LoadedModel r = load_lora_run(source);
  const RunConfig& cfg = r.config;
  std::vector<LinearWeight*> linears;
  r.model->collect_linears(linears);
  std::map<std::string, kernels::QuantizedWeight> merged;
  QaLoraExport result;
  for (LinearWeight* lw : linears) {
    if (!lw->lora()) continue;
    const std::string module = lw->module_name();
    ANVIL_CHECK(lw->quantized(), r.source, ": ", module, " has an adapter but a dense base — a GPTQ export needs every "
                "adapted layer quantized (quant.modules), or use `--to hf DIR --merge`");
    ANVIL_CHECK(!lw->quantized_perm().defined(), r.source, ": ", module, " is an act-order (desc_act) GPTQ weight: its "
                "groups are not the contiguous columns QA-LoRA pools over, so the merge is not exact — use `--to hf DIR --merge`");
    const kernels::QuantizedWeight base = lw->quantized_weight();
    ANVIL_CHECK(base.scheme != kernels::QuantScheme::NF4, r.source, ": ", module, " is nf4 (read from model.init_from) — "
                "an adapter cannot merge into an nf4 base exactly: not possible exactly; use `--to hf DIR --merge` for a "
                "dense model");
    const kernels::QuantizedWeight exact = merge_qa_lora(base, *lw->lora(), module);
    const kernels::QuantizedWeight requantized = requantize_merged(base, lw->lora()->delta_weight(), module);
    Tensor x = Tensor::empty({64, base.in_features});
    PhiloxStream(cfg.run.seed, stream_id(module.c_str())).fill_normal(x, 0.0f, 1.0f);
    result.exact_max_rel = std::max(result.exact_max_rel, merge_output_error(exact, base, *lw->lora(), x).max_rel);
    result.naive_max_rel = std::max(result.naive_max_rel, merge_output_error(requantized, base, *lw->lora(), x).max_rel);
    merged.emplace(module, naive ? requantized : exact);
    ++result.layers;
  }
  std::unique_ptr<Tokenizer> tok;
  std::error_code ec;
  if (!cfg.tokenizer.path.empty() && fs::is_regular_file(cfg.tokenizer.path, ec))
    tok = std::make_unique<Tokenizer>(Tokenizer::load(cfg.tokenizer.path));
  result.format = write_quantized_hf(*r.model, tok.get(), hf_dir, merged);
  return result;
}

}  // namespace anvil
