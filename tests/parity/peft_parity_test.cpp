// anvil's LoRA adapters against the real PEFT (peft 0.10.0 + accelerate 0.27.2 on transformers
// 4.38.2 / Debian's torch 1.13, CPU, f32; scripts/install_deps.sh puts them in ANVIL_HF_PYDEPS), with
// tests/parity/peft_ref.py as the oracle:
//   - a LoRA run trained by anvil, its base exported with `anvil convert --to hf` and its adapter
//     with `--to peft`: PeftModel.from_pretrained gives our logits;
//   - an adapter PEFT saved (random non-zero A and B): lora.init_from reads it, and our logits are
//     PEFT's.
// Both within 1e-5 of the largest logit: the same f32 products in another order (torch's and
// OpenBLAS's summation orders), over a 2-layer model of width 32-64.
#include <gtest/gtest.h>

#include <filesystem>

#include "models/cache.h"
#include "tests/support/distill_fixture.h"
#include "tests/support/hf_oracle.h"
#include "tests/support/reference.h"
#include "tests/support/tensor_file.h"
#include "trainer/load_model.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::max_abs_diff;
using anvil::testing::must_run;
using anvil::testing::shell_quote;

namespace {

const std::string kAnvil = ANVIL_BINARY;
const anvil::testing::TinyRun& tiny() { return anvil::testing::distill_target_run("peft_parity"); }
std::string base_dir() { return tiny().dir + "/target"; }

RunConfig lora_config(const std::string& label, const std::vector<std::string>& extra) {
  std::vector<std::string> all = {"run.out_dir=" + tiny().dir + "/" + label, "checkpoint.resume=none",
                                  "model={init_from: " + base_dir() + "}", "lora.modules=[q_proj, v_proj, down_proj]",
                                  "lora.r=8", "lora.alpha=16", "optimizer.lr=0.02", "schedule.warmup_steps=0",
                                  "training.eval_every=0", "training.steps=8", "checkpoint.every=0"};
  all.insert(all.end(), extra.begin(), extra.end());
  return load_run_config(tiny().config, all);
}

Tensor fixed_ids() {
  Tensor t = Tensor::empty({2, 12}, DType::I32);
  for (int i = 0; i < 24; ++i) t.data<int32_t>()[i] = (i * 37 + 5) % 50;
  return t;
}
Tensor logits_of(TransformerLM& model) {
  Cache c;
  return model.forward(fixed_ids(), c).contiguous().clone();
}
double rel_diff(const Tensor& ours, const Tensor& theirs) {
  return max_abs_diff(ours, theirs) / max_abs_diff(theirs, Tensor::zeros(theirs.shape()));
}

// peft_ref.py with `args` after the mode; returns its logits.
Tensor peft_logits(const std::string& mode, const std::string& args) {
  const std::string pydeps = ANVIL_HF_PYDEPS;
  EXPECT_TRUE(std::filesystem::exists(pydeps + "/peft/__init__.py"))
      << "peft is not installed in " << pydeps << " — run `make deps` (scripts/install_deps.sh)";
  const std::string ids = tiny().dir + "/peft_ids.anvt", out = tiny().dir + "/peft_" + mode + ".anvt";
  anvil::testing::write_tensor_file(ids, {{"ids", fixed_ids()}});
  must_run("PYTHONPATH=" + shell_quote(pydeps) + " HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 " +
           std::string(ANVIL_TORCH_PYTHON) + " " + anvil::testing::source_path("tests/parity/peft_ref.py") + " " +
           mode + " " + args + " " + ids + " " + out);
  return anvil::testing::read_tensor_file(out).at("logits");
}

const std::string& base_hf() {
  static const std::string dir = [] {
    const std::string d = tiny().dir + "/base_hf";
    must_run(kAnvil + " convert --from " + base_dir() + " --to hf " + d);
    return d;
  }();
  return dir;
}

}  // namespace

TEST(PeftParity, PeftLoadsOurAdapter) {
  for (const bool rslora : {false, true}) {
    const std::string label = rslora ? "rslora" : "plain";
    std::vector<std::string> extra;
    if (rslora) extra = {"lora.rslora=true", "lora.modules=[all-linear]"};
    Trainer t(lora_config(label, extra), TrainerMode::Quiet);
    t.train();
    t.save();
    const Tensor ours = logits_of(t.model());
    const std::string adapter = tiny().dir + "/" + label + "_peft";
    must_run(kAnvil + " convert --from " + tiny().dir + "/" + label + " --to peft " + adapter);
    const Tensor theirs = peft_logits("load", base_hf() + " " + adapter);
    const double rel = rel_diff(ours, theirs);
    std::printf("%s: PEFT on our exported adapter vs anvil, max |dlogit| / max |logit| = %.3g\n", label.c_str(), rel);
    EXPECT_LT(rel, 1e-5);
    // The adapter matters: the base alone is far off.
    LoadModelOptions cpu;
    cpu.device = Device::cpu();
    LoadedModel base = load_model(base_hf(), cpu);
    EXPECT_GT(rel_diff(logits_of(*base.model), theirs), 1e-3);
  }
}

TEST(PeftParity, WeReadAnAdapterPeftSaved) {
  const std::string adapter = tiny().dir + "/saved_by_peft";
  const Tensor theirs = peft_logits("save", base_hf() + " " + adapter + " 8 16 q_proj,v_proj,down_proj 7");
  // `adapter` is written before the logits: read it as a fresh run's starting adapter.
  Trainer t(lora_config("from_peft", {"lora.init_from=" + adapter}), TrainerMode::Quiet);
  const double rel = rel_diff(logits_of(t.model()), theirs);
  std::printf("an adapter PEFT saved, in anvil vs PEFT: max |dlogit| / max |logit| = %.3g\n", rel);
  EXPECT_LT(rel, 1e-5);
  LoadModelOptions cpu;
  cpu.device = Device::cpu();
  LoadedModel base = load_model(base_hf(), cpu);
  EXPECT_GT(rel_diff(logits_of(*base.model), theirs), 1e-3);
}
