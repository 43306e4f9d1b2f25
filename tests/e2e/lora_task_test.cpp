// LoRA on a tiny trained base end to end (issue 17): adapters attach to the matched Linear layers
// only, the run trains (the loss falls), the base stays bitwise what model.init_from holds and has
// no gradient buffers, the first step's loss is the base's own (B starts at zero), the checkpoint
// holds the adapters alone and a resume continues bitwise; bad lora settings fail naming the field.
#include <gtest/gtest.h>

#include <map>

#include "tests/support/distill_fixture.h"
#include "tests/support/reference.h"
#include "trainer/checkpoint.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing::max_abs_diff;

namespace {

const anvil::testing::TinyRun& tiny() { return anvil::testing::distill_target_run("lora"); }
std::string base_dir() { return tiny().dir + "/target"; }

RunConfig lora_config(const std::string& label, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> all = {"run.out_dir=" + tiny().dir + "/" + label, "checkpoint.resume=none",
                                  "model={init_from: " + base_dir() + "}", "lora.modules=[q_proj, v_proj, down_proj]",
                                  "lora.r=8", "lora.alpha=16", "lora.dropout=0.1", "optimizer.lr=0.01",
                                  "schedule.warmup_steps=0", "training.eval_every=0", "training.steps=12",
                                  "training.grad_accum_steps=2", "checkpoint.every=0"};
  all.insert(all.end(), extra.begin(), extra.end());
  return load_run_config(tiny().config, all);
}

bool is_adapter(const std::string& name) { return name.find(".lora_") != std::string::npos; }

}  // namespace

TEST(LoraTask, AdaptersTrainOnAFrozenBase) {
  Trainer t(lora_config("train"), TrainerMode::Quiet);
  std::map<std::string, Tensor> before;
  int adapters = 0;
  for (Param* p : t.model().params()) {
    before[p->name] = p->value.clone();
    EXPECT_EQ(p->grad.defined(), is_adapter(p->name)) << p->name;  // the base costs no gradient memory
    if (!is_adapter(p->name)) continue;
    ++adapters;
    const bool matched = p->name.find("q_proj.") != std::string::npos || p->name.find("v_proj.") != std::string::npos ||
                         p->name.find("down_proj.") != std::string::npos;
    EXPECT_TRUE(matched) << p->name;
  }
  const int64_t layers = t.model().config().num_hidden_layers;
  EXPECT_EQ(adapters, 2 * 3 * layers);  // A and B on three Linears per layer
  // A fresh adapter (B = 0) leaves the base's outputs: the first loss is the plain base's.
  RunConfig plain = lora_config("plain", {"lora.modules=[]", "lora.r=64", "lora.alpha=16", "lora.dropout=0",
                                          "training.steps=1"});
  Trainer base_only(plain, TrainerMode::Quiet);
  base_only.train();
  // Training lowers the loss on held-out windows (the steps' own batches differ more than LoRA on
  // q/v/down moves this tiny base in 12 steps, ~0.005 nats; the evaluation is deterministic).
  const double before_val = t.evaluate(4);
  t.train();
  const auto& h = t.history();
  ASSERT_EQ(h.size(), 12u);
  EXPECT_NEAR(h[0].loss, base_only.history()[0].loss, 1e-5 * base_only.history()[0].loss);
  EXPECT_LT(t.evaluate(4), before_val - 0.002);
  for (Param* p : t.model().params()) {
    const bool moved = max_abs_diff(p->value, before.at(p->name)) > 0;
    // Every B moves off zero; the base stays bitwise model.init_from's.
    if (!is_adapter(p->name) || p->name.find("lora_B") != std::string::npos) EXPECT_EQ(moved, is_adapter(p->name)) << p->name;
  }
  // The checkpoint holds the adapters alone.
  const std::string dir = t.save();
  std::vector<Param*> adapter_params, base_params;
  for (Param* p : t.model().params()) (is_adapter(p->name) ? adapter_params : base_params).push_back(p);
  CheckpointContents only_adapters;
  only_adapters.params = checkpoint_tensors(adapter_params);
  EXPECT_NO_THROW(load_checkpoint(dir, only_adapters));
  CheckpointContents with_base;
  with_base.params = checkpoint_tensors({base_params.front()});
  EXPECT_NE(error_of([&] { load_checkpoint(dir, with_base); }), "(no error)");
}

TEST(LoraTask, ResumeIsBitwise) {
  // 8 steps straight equal 4 steps, a checkpoint, and 4 resumed steps (dropout's draws included).
  const std::string ckpt = tiny().dir + "/resume_split_ckpt";
  Trainer straight(lora_config("resume_straight", {"training.steps=8"}), TrainerMode::Quiet);
  straight.train();
  {
    Trainer first(lora_config("resume_split", {"training.steps=8", "checkpoint.dir=" + ckpt}), TrainerMode::Quiet);
    first.train(4);  // stops after step 4 and checkpoints
  }
  Trainer second(lora_config("resume_split", {"training.steps=8", "checkpoint.dir=" + ckpt, "checkpoint.resume=auto"}),
                 TrainerMode::Quiet);
  EXPECT_EQ(second.step(), 4);
  second.train();
  ASSERT_EQ(second.history().size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(second.history()[i].loss, straight.history()[4 + i].loss) << "step " << 5 + i;
  std::map<std::string, const Param*> by_name;
  for (Param* p : straight.model().params()) by_name[p->name] = p;
  for (Param* p : second.model().params()) EXPECT_EQ(max_abs_diff(p->value, by_name.at(p->name)->value), 0.0) << p->name;
}

TEST(LoraTask, BadSettingsFailNamingTheField) {
  const std::string none = error_of([] { Trainer t(lora_config("bad_match", {"lora.modules=[q_prj]"}), TrainerMode::Quiet); });
  EXPECT_NE(none.find("lora.modules: 'q_prj' matches none"), std::string::npos) << none;
  EXPECT_NE(none.find("model.layers.*.self_attn.q_proj"), std::string::npos) << none;  // the names are listed
  const std::string no_base = error_of([] {
    load_run_config(tiny().config, {"lora.modules=[q_proj]", "checkpoint.resume=none"});
  });
  EXPECT_NE(no_base.find("init_from"), std::string::npos) << no_base;
  const std::string off = error_of([] { load_run_config(tiny().config, {"lora.r=8"}); });
  EXPECT_NE(off.find("lora.modules is empty"), std::string::npos) << off;
  const std::string task = error_of([] {
    load_run_config(tiny().config, {"lora.modules=[q_proj]", "task.name=medusa", "model={init_from: " + base_dir() + "}"});
  });
  EXPECT_NE(task.find("task.name"), std::string::npos) << task;
  const std::string dropout = error_of([] { lora_config("bad_dropout", {"lora.dropout=1.0"}); });
  EXPECT_NE(dropout.find("dropout"), std::string::npos) << dropout;
}
