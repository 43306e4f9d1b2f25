// LoRA on a quantized base end to end (issue 17): the quant section quantizes model.init_from's
// Linears on load; the packed base is what kernels::quantize_nf4 / quantize_groupwise make of the
// dense weights, bit for bit, in the model, in the checkpoint (integer datasets beside f32 scales)
// and after training (frozen); it costs its packed bytes only; a quantized run resumes bitwise; a
// checkpoint whose packed sizes do not match and bad quant settings fail with one clear error each.
// The tiny Llama's Linears have in = 32 or 64, so the blocks here are 32 (nf4's default 64 does not
// divide 32: that is one of the errors); the 4.127-bit figure of QLoRA (block 64) is checked on a
// LinearWeight of its own.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "models/linear_weight.h"
#include "tests/support/distill_fixture.h"
#include "tests/support/reference.h"
#include "trainer/checkpoint.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing::max_abs_diff;

namespace {

const anvil::testing::TinyRun& tiny() { return anvil::testing::distill_target_run("quant_lora"); }
std::string base_dir() { return tiny().dir + "/target"; }

const std::vector<std::string> kNf4 = {"quant.scheme=nf4", "quant.block=32", "quant.double_quant=true"};
const std::vector<std::string> kInt4 = {"quant.scheme=int4", "quant.block=32"};

RunConfig quant_config(const std::string& label, const std::vector<std::string>& quant,
                       const std::vector<std::string>& extra = {}) {
  std::vector<std::string> all = {"run.out_dir=" + tiny().dir + "/" + label, "checkpoint.resume=none",
                                  "model={init_from: " + base_dir() + "}", "lora.modules=[all-linear]",
                                  "lora.r=4", "lora.alpha=8", "lora.dropout=0.1", "optimizer.lr=0.01",
                                  "schedule.warmup_steps=0", "training.eval_every=0", "training.steps=6",
                                  "training.grad_accum_steps=2", "checkpoint.every=0"};
  all.insert(all.end(), quant.begin(), quant.end());
  all.insert(all.end(), extra.begin(), extra.end());
  return load_run_config(tiny().config, all);
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  return ca.dtype() == cb.dtype() && ca.numel() == cb.numel() && std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

// The dense base weights model.init_from holds (a LoRA run without quant keeps them as they are).
std::map<std::string, Tensor> dense_base() {
  Trainer dense(quant_config("dense", {}, {"lora.dropout=0"}), TrainerMode::Quiet);
  std::map<std::string, Tensor> out;
  for (Param* p : dense.model().params()) out[p->name] = p->value.clone();
  return out;
}

// The quantization of `dense` the run's quant settings ask for, made by the kernels directly.
kernels::QuantizedWeight reference_quantization(const Tensor& dense, const std::vector<std::string>& quant) {
  return quant == kNf4 ? kernels::quantize_nf4(dense, true, 32, "reference")
                       : kernels::quantize_groupwise(dense, kernels::QuantScheme::Int4, 32, "reference");
}

// The tensors of reference `r` under the names LinearWeight gives them, shaped as the params are.
std::map<std::string, Tensor> reference_params(const std::string& weight, const kernels::QuantizedWeight& r) {
  const int64_t out = r.out_features, in = r.in_features;
  std::map<std::string, Tensor> m = {{weight, r.packed.view({out, in * kernels::quant_bits(r.scheme) / 8})}};
  if (r.double_quant()) {
    m[weight + ".absmax_codes"] = r.absmax_codes;
    m[weight + ".absmax_scales"] = r.absmax_scales;
    m[weight + ".absmax_offset"] = Tensor::full({1}, r.absmax_offset, DType::F32);
  }
  if (r.scales.defined()) {
    m[weight + ".scales"] = r.scales.view({out, in / r.block});
    m[weight + ".zeros"] = r.zeros.view({out, in / r.block});
  }
  return m;
}

// Trains a quantized LoRA run and checks its base, model and checkpoint, against the kernels'
// quantization of the dense weights.
void expect_packed_base_is_the_kernels(const std::vector<std::string>& quant, const std::string& label) {
  const std::map<std::string, Tensor> dense = dense_base();
  Trainer t(quant_config(label, quant), TrainerMode::Quiet);
  std::vector<LinearWeight*> linears;
  t.model().collect_linears(linears);
  std::map<std::string, Tensor> expected;  // every quantized param's reference value
  int64_t quantized = 0, packed_bytes = 0, dense_bytes = 0, expected_bytes = 0;
  for (LinearWeight* lw : linears) {
    const std::string weight = lw->module_name() + ".weight";
    EXPECT_EQ(lw->quantized(), weight != "lm_head.weight") << weight;
    if (!lw->quantized()) continue;
    ++quantized;
    const kernels::QuantizedWeight r = reference_quantization(dense.at(weight), quant);
    for (const auto& [name, value] : reference_params(weight, r)) expected[name] = value;
    // The layer's base costs its packed bytes only: its params are the reference's tensors.
    std::vector<Param*> params;
    lw->collect_params(params);
    int64_t bytes = 0;
    for (Param* p : params)
      if (p->name.find(".lora_") == std::string::npos) bytes += static_cast<int64_t>(p->value.nbytes());
    EXPECT_EQ(bytes, r.bytes()) << weight;
    EXPECT_EQ(lw->quantized_weight().bytes(), r.bytes()) << weight;
    packed_bytes += bytes;
    expected_bytes += r.bytes();
    dense_bytes += r.numel() * 4;
  }
  EXPECT_EQ(quantized, 7 * t.model().config().num_hidden_layers);
  std::printf("[%s] quantized base %lld bytes vs dense f32 %lld: %.4f\n", label.c_str(), static_cast<long long>(packed_bytes),
              static_cast<long long>(dense_bytes), static_cast<double>(packed_bytes) / dense_bytes);

  auto expect_model_holds_the_reference = [&](const char* when) {
    int checked = 0;
    for (Param* p : t.model().params()) {
      const auto it = expected.find(p->name);
      if (it == expected.end()) continue;
      ++checked;
      EXPECT_FALSE(p->trainable) << p->name;
      EXPECT_TRUE(same_bytes(p->value, it->second)) << when << ": " << p->name << " is not the kernels' quantization";
    }
    EXPECT_EQ(checked, static_cast<int>(expected.size())) << when;
  };
  expect_model_holds_the_reference("after loading");
  t.train();
  expect_model_holds_the_reference("after training");  // the frozen base never moves

  // The checkpoint holds the packed tensors as integer datasets (u8 codes; f32 scales), as they are.
  const std::string dir = t.save();
  std::vector<Param> read;
  read.reserve(expected.size());
  for (const auto& [name, value] : expected) read.emplace_back(name, Tensor::zeros(value.shape(), value.dtype()), ParamRole::Vector, Init::Keep);
  std::vector<Param*> read_ptrs;
  for (Param& p : read) read_ptrs.push_back(&p);
  load_checkpoint(dir, read_ptrs, nullptr);
  for (const Param& p : read) EXPECT_TRUE(same_bytes(p.value, expected.at(p.name))) << "checkpoint " << p.name;
  const std::string packed_name = "model.layers.0.self_attn.q_proj.weight";
  Param as_float(packed_name, Tensor::zeros(expected.at(packed_name).shape()), ParamRole::Matrix);
  const std::string e = error_of([&] { load_checkpoint(dir, {&as_float}, nullptr); });
  EXPECT_NE(e.find("not floating point"), std::string::npos) << e;  // the dataset is an integer type
}

}  // namespace

TEST(QuantLoraTask, Nf4BaseIsTheKernelsQuantizationInModelAndCheckpoint) {
  expect_packed_base_is_the_kernels(kNf4, "nf4_base");
}

TEST(QuantLoraTask, Int4BaseIsTheKernelsQuantizationInModelAndCheckpoint) {
  expect_packed_base_is_the_kernels(kInt4, "int4_base");
}

// QLoRA's 4.127 bits per weight (block 64, absmaxes double-quantized in 256-blocks) as a
// LinearWeight holds it: 4 + 8/64 + 32/(64·256) bits, and one f32 offset.
TEST(QuantLoraTask, Nf4DoubleQuantCostsQloraBits) {
  const int64_t out = 512, in = 1024;
  LinearWeight lw("proj", out, in, false);
  const Tensor dense = anvil::testing::random_tensor({out, in}, 11);
  lw.set_quantized(kernels::quantize_nf4(dense, true, 64, "proj"));
  std::vector<Param*> params;
  lw.collect_params(params);
  int64_t bytes = 0;
  for (Param* p : params) bytes += static_cast<int64_t>(p->value.nbytes());
  EXPECT_EQ(bytes, lw.quantized_weight().bytes());
  const double bits = 8.0 * static_cast<double>(bytes) / static_cast<double>(out * in);
  std::printf("nf4 + double quant: %.5f bits per weight, %.5f of f32\n", bits, bits / 32);
  EXPECT_NEAR(bits, 4.0 + 8.0 / 64 + 32.0 / (64 * 256) + 32.0 / (out * in), 1e-9);
  EXPECT_NEAR(bits / 32, 4.127 / 32, 1e-4);
}

TEST(QuantLoraTask, ResumeIsBitwise) {
  // 8 steps straight equal 4 steps, a checkpoint, and 4 resumed steps (dropout's draws included).
  const std::string ckpt = tiny().dir + "/quant_resume_ckpt";
  Trainer straight(quant_config("quant_resume_straight", kNf4, {"training.steps=8"}), TrainerMode::Quiet);
  straight.train();
  {
    Trainer first(quant_config("quant_resume_split", kNf4, {"training.steps=8", "checkpoint.dir=" + ckpt}),
                  TrainerMode::Quiet);
    first.train(4);  // stops after step 4 and checkpoints
  }
  Trainer second(quant_config("quant_resume_split", kNf4, {"training.steps=8", "checkpoint.dir=" + ckpt,
                                                           "checkpoint.resume=auto"}),
                 TrainerMode::Quiet);
  EXPECT_EQ(second.step(), 4);
  second.train();
  ASSERT_EQ(second.history().size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(second.history()[i].loss, straight.history()[4 + i].loss) << "step " << 5 + i;
  std::map<std::string, const Param*> by_name;
  for (Param* p : straight.model().params()) by_name[p->name] = p;
  int adapters = 0;
  for (Param* p : second.model().params()) {
    EXPECT_TRUE(same_bytes(p->value, by_name.at(p->name)->value)) << p->name;
    adapters += p->name.find(".lora_") != std::string::npos;
  }
  EXPECT_EQ(adapters, 2 * 7 * straight.model().config().num_hidden_layers);
}

// A checkpoint whose packed codes have another shape than the layer's (a corrupted or foreign
// file) stops the resume naming the dataset and both shapes.
TEST(QuantLoraTask, ResumeFromMismatchedPackedSizesFails) {
  const std::string ckpt = tiny().dir + "/quant_corrupt_ckpt";
  const std::string name = "model.layers.1.mlp.down_proj.weight";
  {
    Trainer t(quant_config("quant_corrupt", kNf4, {"checkpoint.dir=" + ckpt}), TrainerMode::Quiet);
    Param& packed = t.model().param(name);
    ASSERT_EQ(packed.value.dtype(), DType::U8);
    const Shape good = packed.value.shape();
    packed.value = Tensor::zeros({good[0], good[1] - 8}, DType::U8);  // a row 16 codes short
    t.save();
  }
  const std::string e = error_of([&] {
    Trainer t(quant_config("quant_corrupt", kNf4, {"checkpoint.dir=" + ckpt, "checkpoint.resume=auto"}),
              TrainerMode::Quiet);
  });
  EXPECT_NE(e.find(name), std::string::npos) << e;
  EXPECT_NE(e.find("[32, 24]"), std::string::npos) << e;  // the file's shape; the layer's is [32, 32]
  EXPECT_NE(e.find("[32, 32]"), std::string::npos) << e;
}

TEST(QuantLoraTask, BadQuantSettingsFailNamingTheField) {
  // quant without LoRA: nothing would train.
  const std::string no_lora = error_of([] {
    load_run_config(tiny().config, {"quant.scheme=nf4", "model={init_from: " + base_dir() + "}"});
  });
  EXPECT_NE(no_lora.find("quant.scheme"), std::string::npos) << no_lora;
  EXPECT_NE(no_lora.find("lora.modules is empty"), std::string::npos) << no_lora;
  // double_quant is nf4's.
  const std::string dq = error_of([] { quant_config("bad_dq", kInt4, {"quant.double_quant=true"}); });
  EXPECT_NE(dq.find("quant.double_quant"), std::string::npos) << dq;
  EXPECT_NE(dq.find("nf4 only"), std::string::npos) << dq;
  // A block that is no multiple of 8.
  const std::string block = error_of([] { quant_config("bad_block", {"quant.scheme=int4", "quant.block=12"}); });
  EXPECT_NE(block.find("quant.block"), std::string::npos) << block;
  EXPECT_NE(block.find("multiple of 8"), std::string::npos) << block;
  // quant.modules matching no Linear.
  const std::string none = error_of([] {
    Trainer t(quant_config("bad_modules", kNf4, {"quant.modules=[q_prj]"}), TrainerMode::Quiet);
  });
  EXPECT_NE(none.find("quant.modules: 'q_prj' matches none"), std::string::npos) << none;
  // A pattern whose only layer quant.skip excludes (lm_head, by default) would quantize nothing.
  const std::string skipped = error_of([] {
    Trainer t(quant_config("bad_skipped", kNf4, {"quant.modules=[lm_head]"}), TrainerMode::Quiet);
  });
  EXPECT_NE(skipped.find("quant.modules: 'lm_head' matches only layers that quant.skip excludes"), std::string::npos)
      << skipped;
  // A block the matrix cannot take: nf4's default 64 does not divide in_features 32.
  const std::string shape = error_of([] {
    Trainer t(quant_config("bad_shape", {"quant.scheme=nf4"}), TrainerMode::Quiet);
  });
  EXPECT_NE(shape.find("quant (model.layers.0.self_attn.q_proj)"), std::string::npos) << shape;
  EXPECT_NE(shape.find("in_features 32"), std::string::npos) << shape;
  EXPECT_NE(shape.find("block/group size 64"), std::string::npos) << shape;
}
