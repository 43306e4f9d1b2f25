// Quantized LoRA on a GPU (issue 17): QLoRA (NF4 with double quantization, LoRA dropout) and QA-LoRA
// (INT4, group-pooled adapters) with run.device: cuda, each against the CPU f32 run of the same
// config, step for step. The quantized Linears run through the W4A16/W2A16 kernels
// (kernels/cuda/quant.cu, checked op by op in quant_gpu_test) and the adapters' dropout through
// kernels/cuda/dropout.cu (dropout_gpu_test: the CPU mask bitwise). fp32 within 1e-3 relative and
// bf16 within 2e-2, the bounds tests/gpu/medusa_gpu_test.cpp argues for a few AdamW steps.
#include <gtest/gtest.h>

#include "tests/support/distill_fixture.h"
#include "tests/support/gpu_run.h"
#include "trainer/trainer.h"

using namespace anvil;

namespace {

const anvil::testing::TinyRun& tiny() { return anvil::testing::distill_target_run("quant_lora_gpu"); }

RunConfig quant_config(const std::string& label, const std::vector<std::string>& extra) {
  std::vector<std::string> all = {"run.out_dir=" + tiny().dir + "/" + label, "checkpoint.resume=none",
                                  "task.name=lm", "model={init_from: " + tiny().dir + "/target}",
                                  "schedule.warmup_steps=0", "training.eval_every=0", "training.steps=6",
                                  "optimizer.lr=1.0e-3"};
  all.insert(all.end(), extra.begin(), extra.end());
  return load_run_config(tiny().config, all);
}

void expect_tracks_cpu(const std::vector<std::string>& sets, const std::string& precision, double tol) {
  anvil::testing::expect_gpu_run_tracks_cpu(quant_config, sets, precision, tol);
}

const std::vector<std::string> kQLoRA = {"quant={scheme: nf4, block: 16, double_quant: true}",
                                          "lora={modules: [all-linear], r: 8, alpha: 16, dropout: 0.1}"};
const std::vector<std::string> kQALoRA = {"quant={scheme: int4, block: 16}",
                                           "lora={modules: [all-linear], r: 8, alpha: 16, qa_group: 16}"};

}  // namespace

TEST(QuantLoraGpu, QLoRAFp32MatchesTheCpu) { expect_tracks_cpu(kQLoRA, "fp32", 1e-3); }
TEST(QuantLoraGpu, QLoRABf16TracksTheCpu) { expect_tracks_cpu(kQLoRA, "bf16", 2e-2); }
TEST(QuantLoraGpu, QALoRAInt4Fp32MatchesTheCpu) { expect_tracks_cpu(kQALoRA, "fp32", 1e-3); }
