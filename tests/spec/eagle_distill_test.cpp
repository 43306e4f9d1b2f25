// task.name: distill with distill.drafter: eagle end to end (issue 14, label spec): the EAGLE
// drafter distilled from a tiny trained target learns (the divergence falls) with training-time
// test; its first step's loss equals a naive loop over the steps, columns and vocabulary from a
// fresh drafter's outputs and the target's plain forward; its checkpoint holds its own params
// only; bad eagle settings fail before any work naming the field.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "data/loader.h"
#include "models/eagle_drafter.h"
#include "tests/support/distill_fixture.h"
#include "trainer/checkpoint.h"
#include "trainer/load_model.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::error_of;

namespace {

// The tiny Llama (hidden 32, 2 layers) trained 30 steps: the target.
const anvil::testing::TinyRun& tiny() { return anvil::testing::distill_target_run("eagle_distill"); }

RunConfig eagle_config(const std::string& label, const std::vector<std::string>& extra = {}) {
  return anvil::testing::distill_run_config(tiny(), label, {"distill.drafter=eagle", "training.eval_every=0"}, extra);
}

// log softmax of one row, in double.
std::vector<double> log_softmax(const float* z, int64_t V) {
  double mx = -INFINITY, sum = 0;
  for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(z[v]));
  for (int64_t v = 0; v < V; ++v) sum += std::exp(z[v] - mx);
  std::vector<double> out(V);
  for (int64_t v = 0; v < V; ++v) out[v] = z[v] - mx - std::log(sum);
  return out;
}

// The first step's forward-KL loss from a fresh drafter: step s at column t is scored against
// the target's distribution at position t + 1 + s (it predicts token t + 2 + s), summed over
// steps and divided by the micro-batch's token count, averaged over micro-batches.
double naive_first_step(const RunConfig& config) {
  anvil::testing::FirstStepInputs in(config);
  const RunConfig& c = in.config;
  Loader& loader = in.loader;
  const LoadedModel& target = in.target;
  EagleDrafter drafter(*target.model, EagleDrafter::default_layers(target.model->config().num_hidden_layers));
  drafter.init_weights(static_cast<uint64_t>(c.run.seed));
  const int64_t M = c.training.grad_accum_steps, V = c.model.vocab_size, S = c.distill.ttt_steps;
  double loss = 0;
  for (int64_t m = 0; m < M; ++m) {
    const Batch batch = loader.next();
    const int64_t B = batch.ids.size(0), T = batch.ids.size(1);
    Cache ct, cd, ch;
    HiddenTaps taps;
    taps.layers = drafter.layers();
    const Tensor zt = target.model->forward(batch.ids, ct).contiguous();
    Cache trunk;
    target.model->forward_hidden(batch.ids, trunk, &taps);
    const Tensor normed = drafter.forward_train(batch.ids, taps.states, S, cd);
    const Tensor zs = drafter.body().forward_head(normed, ch).contiguous();
    const int32_t* labels = batch.targets.data<int32_t>();
    double total = 0, count = 0;
    for (int64_t i = 0; i < batch.targets.numel(); ++i) count += labels[i] != c.training.ignore_index;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t t = 0; t + 1 + s < T; ++t) {
          if (labels[b * T + t + 1 + s] == c.training.ignore_index) continue;
          const std::vector<double> lp = log_softmax(zt.data<float>() + (b * T + t + 1 + s) * V, V);
          const std::vector<double> lq = log_softmax(zs.data<float>() + (b * S * T + s * T + t) * V, V);
          for (int64_t v = 0; v < V; ++v) total += std::exp(lp[v]) * (lp[v] - lq[v]);
        }
    loss += total / count / static_cast<double>(M);
  }
  return loss;
}

}  // namespace

TEST(EagleDistill, TheDrafterLearnsWithTrainingTimeTest) {
  const RunConfig config = eagle_config("learns", {"training.steps=20", "distill.ttt_steps=2"});
  Trainer t(config, TrainerMode::Quiet);
  t.train();
  const auto& h = t.history();
  ASSERT_EQ(h.size(), 20u);
  const double last = (h[17].loss + h[18].loss + h[19].loss) / 3;
  EXPECT_LT(last, 0.8 * h[0].loss) << "first " << h[0].loss << ", last three " << last;
}

TEST(EagleDistill, FirstStepLossEqualsANaiveLoop) {
  for (int64_t steps : {1, 3}) {
    const RunConfig config = eagle_config("naive" + std::to_string(steps),
                                          {"training.steps=1", "distill.ttt_steps=" + std::to_string(steps)});
    Trainer t(config, TrainerMode::Quiet);
    t.train();
    const double expected = naive_first_step(config);
    EXPECT_NEAR(t.history()[0].loss, expected, 2e-4 * expected) << "ttt_steps " << steps;
    EXPECT_GT(expected, 0.01);
  }
}

TEST(EagleDistill, TheCheckpointHoldsTheDraftersOwnParams) {
  const RunConfig config = eagle_config("ckpt", {"training.steps=2"});
  Trainer t(config, TrainerMode::Quiet);
  t.train();
  const std::string dir = find_checkpoint_dir(config.checkpoint.dir);
  const LoadedModel target = load_model(config.distill.target);
  EagleDrafter fresh(*target.model, EagleDrafter::default_layers(target.model->config().num_hidden_layers));
  fresh.init_weights(static_cast<uint64_t>(config.run.seed));
  const Tensor init = fresh.body().param("eagle.fc.weight").value.contiguous().to(DType::F32);
  const Tensor init_copy = Tensor::empty(init.shape());
  const_cast<Tensor&>(init_copy).copy_(init);
  load_checkpoint(dir, fresh.own_params(), nullptr);  // every own param is there, trained ...
  const Tensor& loaded = fresh.body().param("eagle.fc.weight").value;
  EXPECT_NE(std::memcmp(loaded.data<float>(), init_copy.data<float>(), loaded.nbytes()), 0);
  // ... and the target's embedding is not.
  std::vector<Param*> embedding = {&fresh.body().param("model.embed_tokens.weight")};
  EXPECT_THROW(load_checkpoint(dir, embedding, nullptr), Error);
}

TEST(EagleDistill, StopAndResumeIsBitwiseIdentical) {
  const std::vector<std::string> sets = {"training.steps=4", "distill.ttt_steps=2"};
  Trainer straight(eagle_config("resume_straight", sets), TrainerMode::Quiet);
  straight.train();
  std::vector<std::string> resumable = sets;
  resumable.push_back("checkpoint.resume=auto");
  std::vector<StepRecord> split;
  {
    Trainer first(eagle_config("resume_split", resumable), TrainerMode::Quiet);
    first.train(2);
    split = first.history();
  }
  Trainer second(eagle_config("resume_split", resumable), TrainerMode::Quiet);
  EXPECT_EQ(second.step(), 2);
  second.train();
  split.insert(split.end(), second.history().begin(), second.history().end());
  ASSERT_EQ(split.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(split[i].loss, straight.history()[i].loss) << "step " << i + 1;  // bitwise: the same float
    EXPECT_EQ(split[i].grad_norm, straight.history()[i].grad_norm) << "step " << i + 1;
  }
}

TEST(EagleDistill, BadEagleSettingsFailNamingTheField) {
  std::string e = error_of([] { Trainer t(eagle_config("bad_layers", {"distill.eagle_layers=[0, 1, 2]"})); });
  EXPECT_NE(e.find("distill.eagle_layers: layer 2 is a drafter kind the target cannot serve"), std::string::npos) << e;
  e = error_of([] { eagle_config("bad_steps", {"distill.ttt_steps=0"}); });
  EXPECT_NE(e.find("ttt_steps"), std::string::npos) << e;
  e = error_of([] { eagle_config("bad_count", {"distill.eagle_layers=[0, 1]"}); });
  EXPECT_NE(e.find("three target layers"), std::string::npos) << e;
  e = error_of([] { eagle_config("not_eagle", {"distill.drafter=standalone", "distill.ttt_steps=2"}); });
  EXPECT_NE(e.find("drafter: eagle only"), std::string::npos) << e;
}

// The CLI decodes with the trained EAGLE drafter: greedy `generate --draft` prints what plain
// greedy generation prints, and `eval spec` reports its cases.
TEST(EagleDistill, TheCliDecodesWithTheEagleDrafter) {
  const RunConfig config = eagle_config("cli", {"training.steps=4"});
  Trainer(config, TrainerMode::Quiet).train();
  const std::string anvil = ANVIL_BINARY, target = tiny().dir + "/target";
  const std::string gen = anvil + " generate --checkpoint " + target + " --prompt 'The GNU General' --max-tokens 12 ";
  const std::string plain = anvil::testing::must_run("(" + gen + "--temperature 0 2>/dev/null)");
  const std::string spec =
      anvil::testing::must_run("(" + gen + "--temperature 0 --draft " + config.run.out_dir + " --gamma 3 2>/dev/null)");
  EXPECT_EQ(spec, plain);
  const std::string report = anvil::testing::must_run(anvil + " eval spec --target " + target + " --draft " +
                                                      config.run.out_dir + " --gammas 2 --temperatures 0,1 "
                                                      "--max-tokens 8 --num-prompts 2 --prompt-tokens 6");
  EXPECT_NE(report.find("speedup"), std::string::npos) << report;
}
