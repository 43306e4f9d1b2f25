// A QA-LoRA run exported as an INT4 Hugging Face model (issue 17, trainer/quant_export.h): a few
// steps of QA-LoRA (int4 block 32, lora.qa_group 32) on the tiny trained base, then
// export_qa_lora_merged (`anvil convert --to gptq DIR --merge`) folds the adapters into the zero
// points and load_model of the written directory gives the adapter model's logits within 1e-5 of
// max|logit| (the bar; f32 products of ≤ 64 terms per layer, 2 layers). The naive merge
// (dequantize + add + requantize, written as standard GPTQ) on the same run is far worse — asserted
// and printed beside it. A plain-LoRA run and an NF4 run are refused with the dense merge offered.
#include <gtest/gtest.h>

#include <filesystem>

#include "data/quant_checkpoint.h"
#include "models/hf_quant.h"
#include "models/linear_weight.h"
#include "tests/support/distill_fixture.h"
#include "tests/support/reference.h"
#include "trainer/quant.h"
#include "trainer/quant_export.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing::max_rel_diff;

namespace {

const anvil::testing::TinyRun& tiny() { return anvil::testing::distill_target_run("qalora_export"); }

RunConfig run_config(const std::string& label, const std::vector<std::string>& extra) {
  std::vector<std::string> all = {"run.out_dir=" + tiny().dir + "/" + label, "checkpoint.resume=none",
                                  "model={init_from: " + tiny().dir + "/target}", "lora.modules=[q_proj, v_proj, down_proj]",
                                  "lora.r=8", "lora.alpha=16", "lora.dropout=0", "optimizer.lr=0.02",
                                  "schedule.warmup_steps=0", "training.eval_every=0", "training.steps=8",
                                  "checkpoint.every=0"};
  all.insert(all.end(), extra.begin(), extra.end());
  return load_run_config(tiny().config, all);
}

Tensor logits_of(TransformerLM& model, const Tensor& ids) {
  Cache cache;
  model.forward_loss(ids, ids, cache);
  return cache.get("logits").clone();
}

}  // namespace

TEST(QaLoraExport, MergedInt4ModelEqualsTheAdapterModel) {
  Trainer t(run_config("qalora", {"quant.scheme=int4", "quant.block=32", "lora.qa_group=32"}), TrainerMode::Quiet);
  t.train();
  const std::string checkpoint = t.save();
  const Tensor ids = anvil::testing::random_ids({2, 16}, static_cast<int32_t>(t.model().config().vocab_size), 5);
  const Tensor adapter_logits = logits_of(t.model(), ids);

  const std::string exact_dir = tiny().dir + "/export_exact";
  const QaLoraExport exact = export_qa_lora_merged(checkpoint, exact_dir);
  EXPECT_EQ(exact.format, kAnvilFloatZeros);  // the merged zeros are fractional
  EXPECT_EQ(exact.layers, 3 * t.model().config().num_hidden_layers);
  LoadedModel merged = load_model(exact_dir, {});
  std::vector<LinearWeight*> linears;
  merged.model->collect_linears(linears);
  for (LinearWeight* lw : linears) EXPECT_EQ(lw->quantized(), lw->module_name() != "lm_head") << lw->module_name();
  EXPECT_EQ(merged.model->params().size(), t.model().params().size() - 2 * static_cast<size_t>(exact.layers));
  const double exact_err = max_rel_diff(logits_of(*merged.model, ids), adapter_logits);
  EXPECT_LE(exact_err, 1e-5);

  const std::string naive_dir = tiny().dir + "/export_naive";
  const QaLoraExport naive = export_qa_lora_merged(checkpoint, naive_dir, /*naive=*/true);
  EXPECT_EQ(naive.format, "gptq");  // integer zeros: a standard GPTQ directory
  LoadedModel requantized = load_model(naive_dir, {});
  const double naive_err = max_rel_diff(logits_of(*requantized.model, ids), adapter_logits);
  // The adapters moved the model (the naive merge's error is mostly what it loses of them).
  EXPECT_GT(naive_err, 100 * std::max(exact_err, 1e-8));
  EXPECT_GT(naive.naive_max_rel, 100 * std::max(exact.exact_max_rel, 1e-8));
  std::printf("QA-LoRA int4 g32, %ld adapters: logits vs the adapter model, exact merge (anvil_float_zeros) rel %.2e, "
              "naive requantizing merge (gptq) rel %.2e; worst layer output: exact %.2e, naive %.2e\n",
              long(exact.layers), exact_err, naive_err, exact.exact_max_rel, exact.naive_max_rel);
}

TEST(QaLoraExport, PlainLoraAndNf4AreRefusedWithTheDenseMergeOffered) {
  Trainer plain(run_config("plain", {"quant.scheme=int4", "quant.block=32", "training.steps=1"}), TrainerMode::Quiet);
  plain.train();
  const std::string e1 = error_of([&] { export_qa_lora_merged(plain.save(), tiny().dir + "/export_plain"); });
  EXPECT_NE(e1.find("plain LoRA"), std::string::npos) << e1;
  EXPECT_NE(e1.find("--to hf DIR --merge"), std::string::npos) << e1;
  Trainer nf4(run_config("nf4", {"quant.scheme=nf4", "quant.modules=[down_proj]", "lora.modules=[down_proj]",
                                 "training.steps=1"}),
              TrainerMode::Quiet);
  nf4.train();
  const std::string e2 = error_of([&] { export_qa_lora_merged(nf4.save(), tiny().dir + "/export_nf4"); });
  EXPECT_NE(e2.find("not possible exactly"), std::string::npos) << e2;
  EXPECT_NE(e2.find("--to hf DIR --merge"), std::string::npos) << e2;
  EXPECT_FALSE(std::filesystem::exists(tiny().dir + "/export_nf4"));
}

// model.init_from a GPTQ directory (written here from the tiny base quantized int4 g32) with quant
// none: the layers stay as the file has them, and the run is bitwise the run that quantizes the
// dense base on load (the same codes: GPTQ keeps integer zeros, and f32 scales as written); a
// quant section that asks for another block is refused; the QA-LoRA run exports as before.
TEST(QaLoraExport, TrainsOnAPreQuantizedGptqBase) {
  const std::string gptq_dir = tiny().dir + "/base_gptq";
  {
    LoadedModel base = load_model(tiny().dir + "/target", {});
    RunConfig rc;
    rc.source = "test";
    rc.quant.scheme = "int4";
    rc.quant.block = 32;
    quantize_model(*base.model, rc, nullptr, nullptr);
    ASSERT_EQ(write_quantized_hf(*base.model, nullptr, gptq_dir), "gptq");
  }
  const std::string init = "model={init_from: " + gptq_dir + "}";
  const std::string e = error_of([&] { Trainer(run_config("conflict", {init, "quant.scheme=int4", "quant.block=64"}),
                                               TrainerMode::Quiet); });
  EXPECT_NE(e.find("quant.scheme: none"), std::string::npos) << e;

  Trainer pre(run_config("pre", {init, "lora.qa_group=32"}), TrainerMode::Quiet);
  std::vector<LinearWeight*> linears;
  pre.model().collect_linears(linears);
  for (LinearWeight* lw : linears) EXPECT_EQ(lw->quantized(), lw->module_name() != "lm_head") << lw->module_name();
  pre.train();
  Trainer on_load(run_config("on_load", {"quant.scheme=int4", "quant.block=32", "lora.qa_group=32"}), TrainerMode::Quiet);
  on_load.train();
  ASSERT_EQ(pre.history().size(), on_load.history().size());
  for (size_t i = 0; i < pre.history().size(); ++i) EXPECT_EQ(pre.history()[i].loss, on_load.history()[i].loss) << i;

  const Tensor ids = anvil::testing::random_ids({2, 16}, static_cast<int32_t>(pre.model().config().vocab_size), 6);
  const QaLoraExport exact = export_qa_lora_merged(pre.save(), tiny().dir + "/export_pre");
  LoadedModel merged = load_model(tiny().dir + "/export_pre", {});
  EXPECT_LE(max_rel_diff(logits_of(*merged.model, ids), logits_of(pre.model(), ids)), 1e-5);
  EXPECT_EQ(exact.layers, 3 * pre.model().config().num_hidden_layers);
}
