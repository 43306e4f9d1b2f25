// A LoRA run after training (issue 17): load_model rebuilds it (base from model.init_from,
// quantized as it trained, the checkpoint's adapters) with the training model's logits, dense and
// NF4; generate's KV-cache decoding picks the full forward's argmax; `anvil convert --merge`
// writes a dense HF model whose logits are the adapted model's; `--to peft` and lora.init_from
// carry the adapters bitwise; bad adapters, a mismatched rank and a missing --merge fail clearly.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "data/safetensors.h"
#include "eval/generate.h"
#include "models/cache.h"
#include "tests/support/distill_fixture.h"
#include "tests/support/hf_oracle.h"
#include "tests/support/reference.h"
#include "trainer/load_model.h"
#include "trainer/peft_adapter.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing::max_abs_diff;
using anvil::testing::must_run;
using anvil::testing::run_command;

namespace fs = std::filesystem;

namespace {

const std::string kAnvil = ANVIL_BINARY;
const anvil::testing::TinyRun& tiny() { return anvil::testing::distill_target_run("lora_interop"); }
std::string base_dir() { return tiny().dir + "/target"; }

std::vector<std::string> lora_sets(const std::string& label) {
  return {"run.out_dir=" + tiny().dir + "/" + label, "checkpoint.resume=none", "model={init_from: " + base_dir() + "}",
          "lora.modules=[q_proj, v_proj, down_proj]", "lora.r=8", "lora.alpha=16", "optimizer.lr=0.02",
          "schedule.warmup_steps=0", "training.eval_every=0", "training.steps=8", "checkpoint.every=0"};
}
RunConfig lora_config(const std::string& label, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> all = lora_sets(label);
  all.insert(all.end(), extra.begin(), extra.end());
  return load_run_config(tiny().config, all);
}
const std::vector<std::string> kNf4 = {"quant={scheme: nf4, block: 32}"};

Tensor fixed_ids() {
  std::vector<int32_t> v;
  for (int i = 0; i < 2 * 12; ++i) v.push_back((i * 37 + 5) % 50);
  Tensor t = Tensor::empty({2, 12}, DType::I32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}
Tensor logits_of(TransformerLM& model, const Tensor& ids) {
  Cache c;
  return model.forward(ids, c).contiguous().clone();
}
double max_abs(const Tensor& t) { return max_abs_diff(t, Tensor::zeros(t.shape())); }

// A trained LoRA run (saved), its logits on fixed_ids from the training model itself.
struct Trained {
  std::string run_dir, checkpoint;
  Tensor logits;
  std::map<std::string, Tensor> adapters;
};
Trained train(const std::string& label, const std::vector<std::string>& extra) {
  Trainer t(lora_config(label, extra), TrainerMode::Quiet);
  t.train();
  Trained out;
  out.checkpoint = t.save();
  out.run_dir = tiny().dir + "/" + label;
  out.logits = logits_of(t.model(), fixed_ids());
  for (Param* p : t.model().params())
    if (p->name.find(".lora_") != std::string::npos) out.adapters[p->name] = p->value.clone();
  return out;
}
const Trained& dense() {
  static const Trained run = train("dense", {});
  return run;
}
const Trained& nf4() {
  static const Trained run = train("nf4", kNf4);
  return run;
}

LoadModelOptions on_cpu() {
  LoadModelOptions o;
  o.device = Device::cpu();
  o.compute = DType::F32;
  return o;
}

void expect_reloads(const Trained& run) {
  LoadedModel loaded = load_model(run.checkpoint, on_cpu());
  const Tensor ours = logits_of(*loaded.model, fixed_ids());
  // The same weights through the same kernels: bitwise.
  EXPECT_EQ(max_abs_diff(ours, run.logits), 0.0);
  // And the adapters are in it: the base alone differs.
  LoadedModel base = load_model(base_dir(), on_cpu());
  EXPECT_GT(max_abs_diff(logits_of(*base.model, fixed_ids()), run.logits), 1e-3 * max_abs(run.logits));
  // Greedy KV-cache decoding: each token is the argmax of a full forward over the sequence so far
  // (up to a near tie within f32 rounding).
  const std::vector<int32_t> prompt = {3, 17, 29, 8};
  const auto out = generate(*loaded.model, {prompt}, 8, SamplingConfig::greedy());
  ASSERT_EQ(out.size(), 1u);
  std::vector<int32_t> seq = prompt;
  for (int32_t token : out[0]) {
    Tensor ids = Tensor::empty({1, static_cast<int64_t>(seq.size())}, DType::I32);
    std::copy(seq.begin(), seq.end(), ids.data<int32_t>());
    const Tensor z = logits_of(*loaded.model, ids);
    const int64_t V = z.size(2);
    const float* last = z.data<float>() + (seq.size() - 1) * V;
    const float best = *std::max_element(last, last + V);
    EXPECT_GE(last[token], best - 1e-5f * std::max(1.0f, std::fabs(best))) << "token " << seq.size();
    seq.push_back(token);
  }
}

// The merged export against the adapted model: W + sBA instead of W x + s B (A x), and (NF4) the
// dequantized weight against the fused kernel, in f32 over a 2-layer model of width 32-64; the
// roundings are ~1e-7 relative per product, a few products deep.
void expect_merge_matches(const Trained& run, const std::string& label) {
  const std::string hf = tiny().dir + "/" + label + "_merged";
  must_run(kAnvil + " convert --from " + run.run_dir + " --to hf " + hf + " --merge");
  const SafetensorsIndex index = SafetensorsIndex::open(hf);
  for (const std::string& name : index.names())
    EXPECT_TRUE(name.find("lora_") == std::string::npos && name.find(".absmax") == std::string::npos) << name;
  EXPECT_EQ(index.info("model.layers.0.self_attn.q_proj.weight").format_dtype, "F32");
  LoadedModel merged = load_model(hf, on_cpu());
  const Tensor theirs = logits_of(*merged.model, fixed_ids());
  const double rel = max_abs_diff(theirs, run.logits) / max_abs(run.logits);
  std::printf("%s: merged HF model vs the LoRA model, max |dlogit| / max |logit| = %.3g\n", label.c_str(), rel);
  EXPECT_LT(rel, 1e-5);
}

}  // namespace

TEST(LoraInterop, DenseRunReloadsAndGenerates) { expect_reloads(dense()); }
TEST(LoraInterop, Nf4RunReloadsAndGenerates) { expect_reloads(nf4()); }

TEST(LoraInterop, MergedExportHasTheAdaptedLogits) {
  expect_merge_matches(dense(), "dense");
  expect_merge_matches(nf4(), "nf4");
}

TEST(LoraInterop, CliGenerateEvalAndConvertErrors) {
  const std::string gen = must_run(kAnvil + " generate --checkpoint " + nf4().run_dir +
                                   " --prompt 'And the' --max-tokens 6 --temperature 0");
  EXPECT_NE(gen.find("And the"), std::string::npos) << gen;
  must_run(kAnvil + " eval --checkpoint " + nf4().run_dir + " --batches 2");
  std::string out;
  EXPECT_NE(run_command(kAnvil + " convert --from " + dense().run_dir + " --to hf " + tiny().dir +
                            "/nomerge", out), 0);
  EXPECT_NE(out.find("--merge"), std::string::npos) << out;
  EXPECT_NE(out.find("--to peft"), std::string::npos) << out;
  EXPECT_NE(run_command(kAnvil + " convert --from " + base_dir() + " --to peft " + tiny().dir +
                            "/nopeft", out), 0);
  EXPECT_NE(out.find("not a LoRA run"), std::string::npos) << out;
}

TEST(LoraInterop, PeftExportImportsBitwise) {
  for (const Trained* run : {&dense(), &nf4()}) {
    const bool q = run == &nf4();
    const std::string peft = tiny().dir + (q ? "/nf4_peft" : "/dense_peft");
    must_run(kAnvil + " convert --from " + run->run_dir + " --to peft " + peft);
    std::ifstream in(peft + "/adapter_config.json");
    const nlohmann::json cfg = nlohmann::json::parse(in);
    EXPECT_EQ(cfg["r"], 8);
    EXPECT_EQ(cfg["peft_type"], "LORA");
    EXPECT_EQ(cfg["target_modules"], nlohmann::json({"down_proj", "q_proj", "v_proj"}));
    const SafetensorsFile file = SafetensorsFile::open(peft + "/adapter_model.safetensors");
    EXPECT_EQ(file.names().size(), run->adapters.size());
    EXPECT_EQ(file.info("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight").shape, (Shape{8, 64}));
    EXPECT_EQ(file.info("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").shape, (Shape{32, 8}));
    // A new run starting from it holds the same adapters, bitwise, and so the same logits.
    std::vector<std::string> extra = {"lora.init_from=" + peft};
    if (q) extra.insert(extra.end(), kNf4.begin(), kNf4.end());
    Trainer t(lora_config(q ? "nf4_from_peft" : "dense_from_peft", extra), TrainerMode::Quiet);
    int seen = 0;
    for (Param* p : t.model().params()) {
      if (p->name.find(".lora_") == std::string::npos) continue;
      ++seen;
      EXPECT_EQ(max_abs_diff(p->value, run->adapters.at(p->name)), 0.0) << p->name;
    }
    EXPECT_EQ(seen, static_cast<int>(run->adapters.size()));
    EXPECT_EQ(max_abs_diff(logits_of(t.model(), fixed_ids()), run->logits), 0.0);
  }
}

TEST(LoraInterop, BadAdaptersFailClearly) {
  const std::string peft = tiny().dir + "/bad_src_peft";
  must_run(kAnvil + " convert --from " + dense().run_dir + " --to peft " + peft);
  // Another rank.
  const std::string rank = error_of([&] { Trainer t(lora_config("bad_r", {"lora.r=4", "lora.init_from=" + peft}), TrainerMode::Quiet); });
  EXPECT_NE(rank.find("r = 8 but lora.r = 4"), std::string::npos) << rank;
  const std::string alpha = error_of([&] { Trainer t(lora_config("bad_a", {"lora.alpha=8", "lora.init_from=" + peft}), TrainerMode::Quiet); });
  EXPECT_NE(alpha.find("lora.alpha"), std::string::npos) << alpha;
  // Modules the run does not adapt.
  const std::string fewer = error_of([&] {
    Trainer t(lora_config("bad_modules", {"lora.modules=[q_proj]", "lora.init_from=" + peft}), TrainerMode::Quiet);
  });
  EXPECT_NE(fewer.find("no adapter of this run"), std::string::npos) << fewer;
  // Another base: the same names at other shapes (a wider model's down_proj).
  const std::string other = tiny().dir + "/bad_other_peft";
  fs::create_directories(other);
  fs::copy_file(peft + "/adapter_config.json", other + "/adapter_config.json");
  const SafetensorsFile file = SafetensorsFile::open(peft + "/adapter_model.safetensors");
  TensorMap tensors;
  for (const std::string& name : file.names()) tensors[name] = file.get_f32(name);
  tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"] = Tensor::zeros({8, 128});
  write_safetensors(other + "/adapter_model.safetensors", tensors);
  const std::string shape = error_of([&] { Trainer t(lora_config("bad_shape", {"lora.init_from=" + other}), TrainerMode::Quiet); });
  EXPECT_NE(shape.find("another base"), std::string::npos) << shape;
  EXPECT_NE(shape.find("[8, 128]"), std::string::npos) << shape;
  // QA-LoRA adapters have no PEFT form.
  const std::string qa = error_of([&] {
    Trainer t(lora_config("bad_qa", {"lora.qa_group=16", "lora.init_from=" + peft}), TrainerMode::Quiet);
  });
  EXPECT_NE(qa.find("qa_group"), std::string::npos) << qa;
  // ... nor export.
  const RunConfig qa_config = lora_config("bad_qa_export", {"lora.qa_group=16", "quant={scheme: int4, block: 16}"});
  Trainer qa_run(qa_config, TrainerMode::Quiet);
  const std::string qa_export = error_of([&] { save_peft_adapter(qa_run.model(), qa_config, tiny().dir + "/qa_peft"); });
  EXPECT_NE(qa_export.find("QA-LoRA"), std::string::npos) << qa_export;
  EXPECT_NE(qa_export.find("--merge"), std::string::npos) << qa_export;
}

TEST(LoraInterop, MovedBaseNamesTheFix) {
  const std::string moved = tiny().dir + "/moved_base";
  fs::copy(base_dir(), moved, fs::copy_options::recursive);
  std::vector<std::string> sets = lora_sets("moved");
  sets.push_back("model={init_from: " + moved + "}");
  sets.push_back("training.steps=1");
  std::string checkpoint;
  {
    Trainer t(load_run_config(tiny().config, sets), TrainerMode::Quiet);
    t.train();
    checkpoint = t.save();
  }
  fs::remove_all(moved);
  const std::string gone = error_of([&] { load_model(checkpoint, on_cpu()); });
  EXPECT_NE(gone.find("LoRA run"), std::string::npos) << gone;
  EXPECT_NE(gone.find("--set model.init_from=PATH"), std::string::npos) << gone;
  LoadModelOptions elsewhere = on_cpu();
  elsewhere.overrides = {"model.init_from=" + base_dir()};
  EXPECT_NO_THROW(load_model(checkpoint, elsewhere));
}
