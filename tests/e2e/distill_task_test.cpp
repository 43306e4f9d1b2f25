// task.name: distill end to end (issue 14, label spec): a small drafter distilled from a tiny
// trained target learns (the divergence falls), logs acceptance and tau_sim, scores ~0 against a
// copy of the target, and its first step's loss equals the divergence a naive loop computes from
// plain forwards of both models; loss: ce is the lm objective; a stopped run resumes bitwise;
// bad input fails before any work with an error naming the field.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "models/hf_convert.h"
#include "tests/support/distill_fixture.h"
#include "trainer/distill_task.h"
#include "trainer/load_model.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing::metric;

namespace {

// The tiny run and its target (the tiny Llama trained 30 steps).
const anvil::testing::TinyRun& tiny() { return anvil::testing::distill_target_run("distill"); }
std::string target_dir() { return tiny().dir + "/target"; }

// A distill run: the drafter is a 1-layer, hidden-16 Llama on the target's tokenizer.
RunConfig distill_config(const std::string& label, const std::vector<std::string>& extra = {}) {
  return anvil::testing::distill_run_config(tiny(), label, {"model.hidden_size=16", "model.num_hidden_layers=1",
                                            "model.intermediate_size=32", "training.eval_every=10"}, extra);
}

uint64_t bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

// ---- the naive reference: p, q and the divergence of one row, in double ----

std::vector<double> softmax(const float* z, int64_t V, double T, const std::vector<bool>& keep) {
  double mx = -INFINITY, sum = 0;
  for (int64_t v = 0; v < V; ++v)
    if (keep[v]) mx = std::max(mx, z[v] / T);
  std::vector<double> p(V, 0.0);
  for (int64_t v = 0; v < V; ++v)
    if (keep[v]) sum += p[v] = std::exp(z[v] / T - mx);
  for (double& x : p) x /= sum;
  return p;
}

// eval/generate.h's filters: top-k on the logits (ties with the k-th kept), then top-p over the
// kept tokens' softmax (every token whose preceding mass in descending order is < top_p).
std::vector<double> filtered_distribution(const float* z, int64_t V, double T, int64_t top_k, double top_p) {
  std::vector<bool> keep(V, true);
  if (top_k > 0 && top_k < V) {
    std::vector<float> sorted(z, z + V);
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    for (int64_t v = 0; v < V; ++v) keep[v] = z[v] >= sorted[top_k - 1];
  }
  std::vector<double> p = softmax(z, V, T, keep);
  if (top_p < 1) {
    std::vector<int64_t> order(V);
    for (int64_t v = 0; v < V; ++v) order[v] = v;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
    double before = 0;
    for (int64_t v : order) {
      if (before >= top_p) keep[v] = false;
      before += p[v];
    }
    p = softmax(z, V, T, keep);
  }
  return p;
}

struct RowScore {
  double divergence, alpha;
};
RowScore score_row(const float* zt, const float* zs, int64_t V, const DistillSection& d) {
  const std::vector<double> p = filtered_distribution(zt, V, d.temperature, d.top_k, d.top_p);
  const std::vector<double> q = filtered_distribution(zs, V, d.temperature, 0, 1.0);
  const std::vector<double> qf = filtered_distribution(zs, V, d.temperature, d.top_k, d.top_p);
  RowScore s{0, 0};
  for (int64_t v = 0; v < V; ++v) {
    s.alpha += std::min(p[v], qf[v]);
    const double m = (p[v] + q[v]) / 2;
    if (d.loss == "forward_kl" && p[v] > 0) s.divergence += p[v] * std::log(p[v] / q[v]);
    if (d.loss == "reverse_kl") s.divergence += q[v] * std::log(q[v] / p[v]);
    if (d.loss == "tvd") s.divergence += std::fabs(p[v] - q[v]) / 2;
    if (d.loss == "jsd")
      s.divergence += (p[v] > 0 ? p[v] * std::log(p[v] / m) : 0.0) / 2 + q[v] * std::log(q[v] / m) / 2;
  }
  return s;
}

// The first step's loss and acceptance from plain forwards of the fresh drafter and the target
// over the step's micro-batches, read by a loader of the run's settings.
std::pair<double, double> naive_first_step(const RunConfig& config) {
  anvil::testing::FirstStepInputs in(config);
  const RunConfig& c = in.config;
  Loader& loader = in.loader;
  const LoadedModel& target = in.target;
  TransformerLM drafter(c.model);
  drafter.init_weights(static_cast<uint64_t>(c.run.seed));
  const int64_t M = c.training.grad_accum_steps, V = c.model.vocab_size;
  double loss = 0, alpha_sum = 0, tokens = 0;
  for (int64_t m = 0; m < M; ++m) {
    const Batch batch = loader.next();
    Cache cs, ct;
    const Tensor zs = drafter.forward(batch.ids, cs).contiguous();
    const Tensor zt = target.model->forward(batch.ids, ct).contiguous();
    const int32_t* labels = batch.targets.data<int32_t>();
    double sum = 0, count = 0;
    for (int64_t row = 0; row < batch.targets.numel(); ++row) {
      if (labels[row] == c.training.ignore_index) continue;
      const RowScore s = score_row(zt.data<float>() + row * V, zs.data<float>() + row * V, V, c.distill);
      sum += s.divergence, alpha_sum += s.alpha, count += 1;
    }
    loss += sum / count / static_cast<double>(M);  // each micro-batch's mean, averaged over the step
    tokens += count;
  }
  return {loss, alpha_sum / tokens};
}

}  // namespace

TEST(DistillTask, TheDrafterLearnsAndLogsAcceptance) {
  const RunConfig config = distill_config("learns", {"training.steps=20"});
  Trainer t(config, TrainerMode::Quiet);
  t.train();
  const auto& h = t.history();
  ASSERT_EQ(h.size(), 20u);
  // The divergence falls well below where it started (a fresh drafter is near uniform).
  const double last = (h[17].loss + h[18].loss + h[19].loss) / 3;
  EXPECT_LT(last, 0.8 * h[0].loss) << "first " << h[0].loss << ", last three " << last;
  EXPECT_GT(metric(h.back(), "acceptance"), metric(h.front(), "acceptance"));
  for (const StepRecord& r : h) {
    const double a = metric(r, "acceptance");
    EXPECT_GT(a, 0.0);
    EXPECT_LT(a, 1.0);
    EXPECT_NEAR(metric(r, "tau_sim"), (1 - std::pow(a, 5)) / (1 - a), 1e-12);  // gamma 4
  }
  // metrics.jsonl: acceptance and tau_sim on every step line, their val_ twins on validation lines.
  std::ifstream in(config.run.out_dir + "/metrics.jsonl");
  int steps = 0, validations = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("val_loss")) {
      ++validations;
      EXPECT_TRUE(j.contains("val_acceptance") && j.contains("val_tau_sim")) << line;
      const double a = j["val_acceptance"];
      EXPECT_NEAR(double(j["val_tau_sim"]), (1 - std::pow(a, 5)) / (1 - a), 1e-9);
    } else {
      ++steps;
      EXPECT_TRUE(j.contains("acceptance") && j.contains("tau_sim")) << line;
    }
  }
  EXPECT_EQ(steps, 20);
  EXPECT_EQ(validations, 2);  // eval_every 10
  ASSERT_EQ(t.evaluation_metrics().size(), 2u);
  EXPECT_EQ(t.evaluation_metrics()[0].first, "acceptance");
}

TEST(DistillTask, ACopyOfTheTargetScoresZero) {
  Trainer t(distill_config("copy", {"model={init_from: " + target_dir() + "}", "training.steps=1"}),
            TrainerMode::Quiet);
  t.train();
  ASSERT_EQ(t.history().size(), 1u);
  // The same weights and kernels give the same logits: p = q up to nothing at all.
  EXPECT_LT(std::fabs(t.history()[0].loss), 1e-6);
  EXPECT_GT(metric(t.history()[0], "acceptance"), 1 - 1e-6);
  EXPECT_NEAR(metric(t.history()[0], "tau_sim"), 5.0, 1e-5);
}

// The logged first-step loss and acceptance against plain forwards and a naive double loop.
// Tolerance: the logits agree (same model, same kernels); the loss's f32 log-softmax over V = 512
// entries carries at most ~V * 2^-24 ≈ 3e-5 relative error, so 1e-4 leaves room on any x86-64 BLAS.
void expect_first_step_matches(const std::string& label, const std::vector<std::string>& sets) {
  std::vector<std::string> all = {"training.steps=1", "training.eval_every=0"};
  all.insert(all.end(), sets.begin(), sets.end());
  const RunConfig config = distill_config(label, all);
  Trainer t(config, TrainerMode::Quiet);
  t.train();
  const auto [loss, alpha] = naive_first_step(config);
  EXPECT_NEAR(t.history()[0].loss, loss, 1e-4 * std::fabs(loss)) << label;
  EXPECT_NEAR(metric(t.history()[0], "acceptance"), alpha, 1e-4) << label;
  EXPECT_GT(loss, 0.01) << label << ": the check needs a drafter that differs from the target";
}

TEST(DistillTask, FirstStepLossEqualsANaiveLoopForwardKL) { expect_first_step_matches("naive_fkl", {}); }
TEST(DistillTask, FirstStepLossEqualsANaiveLoopTvdFiltered) {
  expect_first_step_matches("naive_tvd",
                            {"distill.loss=tvd", "distill.temperature=0.7", "distill.top_k=50", "distill.top_p=0.9"});
}
TEST(DistillTask, FirstStepLossEqualsANaiveLoopJsdHot) {
  expect_first_step_matches("naive_jsd", {"distill.loss=jsd", "distill.temperature=2.0"});
}

// loss: ce is the lm objective on the data: the same drafter trains to the same losses as task lm.
TEST(DistillTask, CeIsTheLanguageModelLoss) {
  Trainer distill(distill_config("ce", {"distill.loss=ce", "training.steps=3", "training.eval_every=0"}),
                  TrainerMode::Quiet);
  distill.train();
  const RunConfig lm_config = load_run_config(
      tiny().config, {"run.out_dir=" + tiny().dir + "/ce_lm", "checkpoint.resume=none", "model.hidden_size=16",
                      "model.num_hidden_layers=1", "model.intermediate_size=32", "training.steps=3",
                      "schedule.warmup_steps=0", "training.eval_every=0"});
  Trainer lm(lm_config, TrainerMode::Quiet);
  lm.train();
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(bits(distill.history()[i].loss), bits(lm.history()[i].loss)) << i;
  const double a = metric(distill.history()[0], "acceptance");  // still measured against the target
  EXPECT_GT(a, 0.0);
  EXPECT_LT(a, 1.0);
}

TEST(DistillTask, StopAndResumeIsBitwiseIdentical) {
  const std::vector<std::string> sets = {"training.steps=6", "training.eval_every=0"};
  Trainer straight(distill_config("resume_straight", sets), TrainerMode::Quiet);
  straight.train();
  std::vector<StepRecord> split;
  std::vector<std::string> resumable = sets;
  resumable.push_back("checkpoint.resume=auto");
  {
    Trainer first(distill_config("resume_split", resumable), TrainerMode::Quiet);
    first.train(3);
    split = first.history();
  }
  {
    Trainer second(distill_config("resume_split", resumable), TrainerMode::Quiet);
    EXPECT_EQ(second.step(), 3);
    second.train();
    split.insert(split.end(), second.history().begin(), second.history().end());
  }
  ASSERT_EQ(split.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(bits(split[i].loss), bits(straight.history()[i].loss)) << "step " << i + 1;
    EXPECT_EQ(bits(split[i].grad_norm), bits(straight.history()[i].grad_norm)) << "step " << i + 1;
    EXPECT_EQ(bits(metric(split[i], "acceptance")), bits(metric(straight.history()[i], "acceptance")));
  }
  // The checkpoint holds the drafter's params only (the target reloads from distill.target).
  const LoadedModel back = load_model(tiny().dir + "/resume_split");
  EXPECT_EQ(back.model->config().hidden_size, 16);
}

TEST(DistillTask, BadInputFailsNamingTheField) {
  auto fails_with = [](const std::vector<std::string>& sets, const std::string& expected) {
    const std::string e = error_of([&] { distill_config("bad", sets); });
    EXPECT_NE(e.find(expected), std::string::npos) << "expected '" << expected << "' in: " << e;
  };
  fails_with({"distill.target=" + tiny().dir + "/no_such_run"}, "distill.target");
  fails_with({"distill.target=" + tiny().dir + "/no_such_run"}, "file not found");
  fails_with({"distill.target="}, "is required for task.name: distill");
  fails_with({"distill.loss=kl"}, "distill.loss");
  fails_with({"distill.loss=reverse_kl", "distill.top_k=20"}, "reverse_kl is infinite");
  fails_with({"distill.loss=reverse_kl", "distill.top_p=0.9"}, "drop distill.top_k / distill.top_p");
  fails_with({"distill.drafter=medusa"}, "distill.drafter");
  fails_with({"distill.parallel_tokens=3"}, "configure drafter: parallelspec only");
  fails_with({"distill.ttt_steps=2"}, "configure drafter: eagle only");
  fails_with({"distill.temperature=0"}, "distill.temperature");
  fails_with({"distill.gamma=0"}, "distill.gamma");
  fails_with({"distill.colour=red"}, "unknown key");
  fails_with({"task.name=lm"}, "is set but task.name is lm");
  // A target with another vocabulary: refused when the task is built, before any step.
  const std::string other = tiny().dir + "/target_vocab600";
  {
    Trainer t(load_run_config(tiny().config, {"run.out_dir=" + other, "model.vocab_size=600", "training.steps=1",
                                              "schedule.warmup_steps=0",
                                              "training.eval_every=0", "checkpoint.resume=none"}),
              TrainerMode::Quiet);
    t.train();
  }
  const std::string e = error_of([&] { Trainer t(distill_config("bad_vocab", {"distill.target=" + other})); });
  EXPECT_NE(e.find("must share the tokenizer"), std::string::npos) << e;
  EXPECT_NE(e.find("600"), std::string::npos) << e;
}

// A Hugging Face directory serves as the target as well (the same weights: the same first step);
// one whose tokenizer differs from tokenizer.path is refused, even at an equal vocabulary size.
TEST(DistillTask, AHuggingFaceTargetLoadsAndItsTokenizerIsChecked) {
  const std::vector<std::string> sets = {"training.steps=1", "training.eval_every=0"};
  Trainer from_checkpoint(distill_config("hf_ref", sets), TrainerMode::Quiet);
  from_checkpoint.train();
  const LoadedModel target = load_model(target_dir());
  const Tokenizer tokenizer = Tokenizer::load(tiny().tokenizer);
  const std::string hf = tiny().dir + "/target_hf";
  save_hf(*target.model, &tokenizer, hf);
  std::vector<std::string> from_hf_sets = sets;
  from_hf_sets.push_back("distill.target=" + hf);
  Trainer from_hf(distill_config("hf", from_hf_sets), TrainerMode::Quiet);
  from_hf.train();
  EXPECT_EQ(bits(from_hf.history()[0].loss), bits(from_checkpoint.history()[0].loss));

  // The same weights with a tokenizer of the same size trained on another text.
  std::ifstream in("/usr/share/common-licenses/GPL-2");
  ASSERT_TRUE(in.good()) << "Debian's base-files ships /usr/share/common-licenses/GPL-2";
  std::vector<std::string> docs;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) docs.push_back(line);
  const Tokenizer other = Tokenizer::train(docs, tokenizer.vocab_size(), 2, {"<|endoftext|>"});
  ASSERT_EQ(other.vocab_size(), tokenizer.vocab_size());
  ASSERT_NE(other.hash_hex(), tokenizer.hash_hex());
  const std::string hf_other = tiny().dir + "/target_hf_other_tokenizer";
  save_hf(*target.model, &other, hf_other);
  const std::string e =
      error_of([&] { Trainer t(distill_config("hf_other", {"distill.target=" + hf_other}), TrainerMode::Quiet); });
  EXPECT_NE(e.find("differs from tokenizer.path"), std::string::npos) << e;
  EXPECT_NE(e.find("must share the tokenizer"), std::string::npos) << e;
}

