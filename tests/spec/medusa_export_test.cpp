// A Medusa run exported with `anvil convert --to hf` (issue 15): the base as a Hugging Face
// directory and the heads as Medusa's medusa_lm_head state dict. transformers loads the base,
// Medusa's own head module (built as medusa_model.py builds it) loads the heads with strict=True,
// and its logits for every head and position equal ours from the run (tests/spec/medusa_export.py,
// Debian's torch and the pinned transformers); load_medusa_hf reads the file back bitwise and
// refuses heads of another shape naming the tensor. Tolerance: f32 forwards of a 2-layer model
// with different summation orders, ~1e-5 of the logits' scale; checked at 1e-4.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/hf_convert.h"
#include "tests/support/reference.h"
#include "tests/support/tiny_run.h"
#include "trainer/load_model.h"
#include "trainer/trainer.h"

using namespace anvil;
using namespace anvil::testing;
namespace fs = std::filesystem;

TEST(MedusaExport, MedusasOwnHeadModuleLoadsTheExportAndAgrees) {
  const TinyRun run = make_tiny_target_run("medusa_export");
  const std::string medusa = run.dir + "/medusa", hf = run.dir + "/hf";
  Trainer t(load_run_config(run.config, {"task.name=medusa", "model={init_from: " + run.dir + "/target}",
                                         "medusa.num_heads=3", "medusa.num_layers=2", "training.steps=4",
                                         "training.eval_every=0", "optimizer.lr=1e-2", "run.out_dir=" + medusa,
                                         "checkpoint.resume=none"}),
            TrainerMode::Quiet);
  t.train();
  must_run(std::string(ANVIL_BINARY) + " convert --from " + medusa + " --to hf " + hf);
  ASSERT_TRUE(fs::exists(hf + "/medusa_lm_head.safetensors"));

  const LoadedModel loaded = load_model(medusa);
  ASSERT_TRUE(loaded.medusa);
  const std::vector<int32_t> ids = {5, 17, 3, 42, 99, 7};
  std::string csv;
  for (int32_t id : ids) csv += (csv.empty() ? "" : ",") + std::to_string(id);
  const std::string pydeps = ANVIL_HF_PYDEPS;
  ASSERT_TRUE(fs::exists(pydeps + "/transformers/__init__.py"))
      << "transformers is not installed in " << pydeps << " — run `make deps` (scripts/install_deps.sh)";
  must_run("PYTHONPATH=" + pydeps + " " + std::string(ANVIL_TORCH_PYTHON) + " " +
           source_path("tests/spec/medusa_export.py") + " " + hf + " " + csv + " " + run.dir + "/theirs.json");
  const nlohmann::json theirs = nlohmann::json::parse(std::ifstream(run.dir + "/theirs.json"));
  EXPECT_EQ(theirs["config"]["medusa_num_heads"], 3);
  EXPECT_EQ(theirs["config"]["medusa_num_layers"], 2);

  Cache c;
  const Tensor h = loaded.model->forward_hidden(Tensor::from_vector(ids, {1, int64_t(ids.size())}), c);
  for (int64_t k = 0; k < 3; ++k) {
    const Tensor ours = loaded.medusa->infer_head(k, h).contiguous();
    const int64_t V = ours.size(2);
    double err = 0, scale = 0;
    for (size_t pos = 0; pos < ids.size(); ++pos)
      for (int64_t v = 0; v < V; ++v) {
        const double want = theirs["logits"][k][pos][v].get<double>();
        err = std::max(err, std::fabs(ours.data<float>()[pos * V + v] - want));
        scale = std::max(scale, std::fabs(want));
      }
    EXPECT_LT(err, 1e-4 * scale) << "head " << k;
  }

  // Read back into fresh heads: bitwise the run's; heads of another shape are refused by name.
  const ModelConfig& mc = loaded.model->config();
  MedusaHeads back(3, 2, mc.hidden_size, mc.vocab_size, nullptr);
  load_medusa_hf(back, hf);
  const std::vector<Param*> a = back.params(), b = loaded.medusa->params();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(max_abs_diff(a[i]->value, b[i]->value), 0.0) << a[i]->name;
  MedusaHeads fewer(2, 2, mc.hidden_size, mc.vocab_size, nullptr);
  EXPECT_NE(error_of([&] { load_medusa_hf(fewer, hf); }).find("medusa_num_heads"), std::string::npos);
  MedusaHeads wider(3, 2, mc.hidden_size + 2, mc.vocab_size, nullptr);
  const std::string e = error_of([&] { load_medusa_hf(wider, hf); });
  EXPECT_NE(e.find("another base"), std::string::npos) << e;
  fs::remove_all(run.dir);
}
