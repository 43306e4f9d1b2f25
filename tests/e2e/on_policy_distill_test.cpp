// distill.on_policy end to end (issue 14, label spec; trainer/on_policy.h): the config refuses a
// share outside [0, 1], split drafters and non-standalone drafters naming the field; an on-policy
// micro-batch's rows are the data's first half plus the drafter's own generate() continuation,
// scored at the sampled tokens only, independent of how rows split over dp ranks; an all-on-policy
// first step's loss equals a naive divergence over plain forwards of both models at those
// positions; a stopped run with on_policy 0.5 resumes bitwise.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "data/loader.h"
#include "tests/support/tiny_run.h"
#include "trainer/load_model.h"
#include "trainer/on_policy.h"
#include "trainer/trainer.h"

using namespace anvil;

namespace {

const anvil::testing::TinyRun& tiny() {
  static const anvil::testing::TinyRun run = anvil::testing::make_tiny_target_run("on_policy");
  static const struct RemoveAtExit {  // the directory carries this process's id: it is ours alone
    ~RemoveAtExit() { std::filesystem::remove_all(run.dir); }
  } remove_at_exit;
  return run;
}

// A distill run with a 1-layer, hidden-16 drafter (as distill_task_test), 4 micro-batches a step.
RunConfig on_policy_config(const std::string& label, std::vector<std::string> extra = {}) {
  std::vector<std::string> sets = {"run.out_dir=" + tiny().dir + "/" + label,
                                   "checkpoint.resume=none",
                                   "task.name=distill",
                                   "distill.target=" + tiny().dir + "/target",
                                   "model.hidden_size=16",
                                   "model.num_hidden_layers=1",
                                   "model.intermediate_size=32",
                                   "training.grad_accum_steps=4",
                                   "training.eval_every=0",
                                   "schedule.warmup_steps=0"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return load_run_config(tiny().config, sets);
}

double metric(const StepRecord& r, const std::string& name) {
  for (const auto& [key, value] : r.task_metrics)
    if (key == name) return value;
  ADD_FAILURE() << "no task metric " << name;
  return NAN;
}

uint64_t bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// The run's fresh drafter and a loader of its settings, as the trainer builds them.
struct Fresh {
  RunConfig config;
  std::unique_ptr<TransformerLM> drafter;
  std::unique_ptr<Loader> loader;
};
Fresh fresh(const RunConfig& config) {
  Fresh f{config, nullptr, nullptr};
  resolve_vocab_size(f.config, Tokenizer::load(f.config.tokenizer.path).vocab_size());
  auto store = std::make_shared<const TokenStore>(TokenStore::open(f.config.data.train));
  f.loader = std::make_unique<Loader>(store, loader_config(f.config), Split::Train);
  f.drafter = std::make_unique<TransformerLM>(f.config.model);
  f.drafter->init_weights(static_cast<uint64_t>(f.config.run.seed));
  return f;
}

// Row i of a [B, T] i32 host tensor.
std::vector<int32_t> row(const Tensor& t, int64_t i) {
  const int64_t T = t.size(1);
  return std::vector<int32_t>(t.data<int32_t>() + i * T, t.data<int32_t>() + (i + 1) * T);
}

}  // namespace

TEST(OnPolicyDistill, BadSettingsFailNamingTheField) {
  auto fails_with = [](const std::vector<std::string>& sets, const std::string& expected) {
    const std::string e = error_of([&] { on_policy_config("bad", sets); });
    EXPECT_NE(e.find(expected), std::string::npos) << "expected '" << expected << "' in: " << e;
  };
  fails_with({"distill.on_policy=1.5"}, "distill.on_policy");
  fails_with({"distill.on_policy=-0.1"}, "must be in [0, 1]");
  fails_with({"distill.on_policy=0.5", "parallel.tp=2"}, "parallel.tp");
  fails_with({"distill.on_policy=0.5", "parallel.tp=2"}, "distill.on_policy");
  fails_with({"distill.on_policy=0.5", "distill.drafter=eagle"}, "samples from a standalone drafter only");
  fails_with({"distill.on_policy=0.5", "distill.drafter=parallelspec"}, "distill.on_policy");
  fails_with({"task.name=lm", "distill.target=", "distill.on_policy=0.5"}, "is set but task.name is lm");
}

TEST(OnPolicyDistill, RowsAreThePromptHalfAndTheDraftersOwnContinuation) {
  Fresh f = fresh(on_policy_config("rows", {"distill.on_policy=1", "distill.temperature=0.8", "distill.top_k=40"}));
  const Batch data = f.loader->next();
  const int64_t B = data.ids.size(0), T = data.ids.size(1), P = T / 2;
  const int32_t ignore = static_cast<int32_t>(f.config.training.ignore_index);
  const SamplingConfig sampling = on_policy_sampling(f.config, 3, 1);
  EXPECT_EQ(sampling.temperature, 0.8);
  EXPECT_EQ(sampling.top_k, 40);
  EXPECT_NE(sampling.seed, on_policy_sampling(f.config, 3, 2).seed);  // each micro-batch its own draws
  EXPECT_NE(sampling.seed, on_policy_sampling(f.config, 4, 1).seed);  // and each step
  const std::vector<Tensor> before = [&] {
    std::vector<Tensor> copies;
    for (Param* p : f.drafter->params()) copies.push_back(p->value.clone());
    return copies;
  }();
  const uint32_t first_row = 8;  // as dp rank 2 of B = 4 rows would
  const Batch rows = on_policy_rows(*f.drafter, data, sampling, first_row, ignore);
  for (int64_t i = 0; i < B; ++i) {
    const std::vector<int32_t> ids = row(rows.ids, i), data_ids = row(data.ids, i), targets = row(rows.targets, i);
    const std::vector<int32_t> prompt(data_ids.begin(), data_ids.begin() + P);
    EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), ids.begin())) << "row " << i;
    // generate() called directly on the row alone, at its global row's sampling stream.
    const auto direct = generate(*f.drafter, {prompt}, static_cast<int>(T - P), sampling, std::nullopt,
                                 first_row + static_cast<uint32_t>(i));
    ASSERT_EQ(direct[0].size(), static_cast<size_t>(T - P));
    EXPECT_TRUE(std::equal(direct[0].begin(), direct[0].end(), ids.begin() + P)) << "row " << i;
    for (int64_t t = 0; t < T; ++t) {
      if (t >= P - 1 && t < T - 1)
        EXPECT_EQ(targets[t], ids[t + 1]) << "row " << i << " position " << t;
      else
        EXPECT_EQ(targets[t], ignore) << "row " << i << " position " << t;
    }
  }
  EXPECT_FALSE(rows.segment_ids.defined());
  // Sampling leaves the drafter's weights as they were.
  const std::vector<Param*> params = f.drafter->params();
  for (size_t k = 0; k < params.size(); ++k)
    EXPECT_EQ(std::memcmp(params[k]->value.data<float>(), before[k].data<float>(), before[k].numel() * 4), 0);
  // The micro-batch choice: a pure function of (seed, step, m); 0 never, 1 always, 0.5 some.
  int chosen = 0;
  for (int64_t m = 0; m < 200; ++m) {
    EXPECT_FALSE(on_policy_micro_batch(7, 5, m, 0.0));
    EXPECT_TRUE(on_policy_micro_batch(7, 5, m, 1.0));
    EXPECT_EQ(on_policy_micro_batch(7, 5, m, 0.5), on_policy_micro_batch(7, 5, m, 0.5));
    chosen += on_policy_micro_batch(7, 5, m, 0.5);
  }
  EXPECT_GT(chosen, 60);  // Binomial(200, 0.5): 60 is > 5.6 sigma below the mean
  EXPECT_LT(chosen, 140);
}

// Tolerance as distill_task_test: f32 log-softmax over V = 512 entries, ~3e-5 relative; 1e-4 leaves room.
TEST(OnPolicyDistill, AllOnPolicyFirstStepLossIsTheDivergenceOverSampledPositions) {
  const RunConfig config = on_policy_config("naive", {"distill.on_policy=1", "training.steps=1"});
  Trainer t(config, TrainerMode::Quiet);
  t.train();
  ASSERT_EQ(t.history().size(), 1u);
  EXPECT_EQ(metric(t.history()[0], "on_policy_fraction"), 1.0);

  Fresh f = fresh(config);
  const LoadedModel target = load_model(f.config.distill.target);
  const int64_t M = f.config.training.grad_accum_steps, V = f.config.model.vocab_size;
  double loss = 0;
  for (int64_t m = 0; m < M; ++m) {
    const Batch data = f.loader->next();
    const int64_t B = data.ids.size(0), T = data.ids.size(1), P = T / 2;
    const SamplingConfig sampling = on_policy_sampling(f.config, 0, m);
    Tensor ids = Tensor::empty({B, T}, DType::I32);
    for (int64_t i = 0; i < B; ++i) {  // rows built directly: prompt half + generate()
      std::vector<int32_t> r = row(data.ids, i);
      r.resize(P);
      const auto sampled = generate(*f.drafter, {r}, static_cast<int>(T - P), sampling, std::nullopt,
                                    static_cast<uint32_t>(i));
      r.insert(r.end(), sampled[0].begin(), sampled[0].end());
      std::copy(r.begin(), r.end(), ids.data<int32_t>() + i * T);
    }
    Cache cs, ct;
    const Tensor zs = f.drafter->forward(ids, cs).contiguous();
    const Tensor zt = target.model->forward(ids, ct).contiguous();
    double sum = 0, count = 0;
    for (int64_t i = 0; i < B; ++i)
      for (int64_t pos = P - 1; pos < T - 1; ++pos) {  // the positions whose next token was sampled
        const float* a = zt.data<float>() + (i * T + pos) * V;
        const float* b = zs.data<float>() + (i * T + pos) * V;
        double ma = -INFINITY, mb = -INFINITY, sa = 0, sb = 0, kl = 0;
        for (int64_t v = 0; v < V; ++v) ma = std::max(ma, double(a[v])), mb = std::max(mb, double(b[v]));
        for (int64_t v = 0; v < V; ++v) sa += std::exp(a[v] - ma), sb += std::exp(b[v] - mb);
        for (int64_t v = 0; v < V; ++v) {  // forward KL(p || q) at temperature 1
          const double lp = a[v] - ma - std::log(sa), lq = b[v] - mb - std::log(sb);
          kl += std::exp(lp) * (lp - lq);
        }
        sum += kl, count += 1;
      }
    loss += sum / count / static_cast<double>(M);
  }
  EXPECT_NEAR(t.history()[0].loss, loss, 1e-4 * std::fabs(loss));
  EXPECT_GT(loss, 0.01) << "the check needs a drafter that differs from the target";
}

TEST(OnPolicyDistill, StopAndResumeIsBitwiseIdentical) {
  const std::vector<std::string> sets = {"distill.on_policy=0.5", "training.steps=4"};
  Trainer straight(on_policy_config("resume_straight", sets), TrainerMode::Quiet);
  straight.train();
  std::vector<StepRecord> split;
  std::vector<std::string> resumable = sets;
  resumable.push_back("checkpoint.resume=auto");
  {
    Trainer first(on_policy_config("resume_split", resumable), TrainerMode::Quiet);
    first.train(2);
    split = first.history();
  }
  {
    Trainer second(on_policy_config("resume_split", resumable), TrainerMode::Quiet);
    EXPECT_EQ(second.step(), 2);
    second.train();
    split.insert(split.end(), second.history().begin(), second.history().end());
  }
  ASSERT_EQ(split.size(), 4u);
  double fractions = 0;
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(bits(split[i].loss), bits(straight.history()[i].loss)) << "step " << i + 1;
    EXPECT_EQ(bits(split[i].grad_norm), bits(straight.history()[i].grad_norm)) << "step " << i + 1;
    const double fraction = metric(straight.history()[i], "on_policy_fraction");
    EXPECT_EQ(metric(split[i], "on_policy_fraction"), fraction) << "step " << i + 1;
    int expected = 0;
    for (int64_t m = 0; m < 4; ++m) expected += on_policy_micro_batch(7, static_cast<int64_t>(i), m, 0.5);
    EXPECT_EQ(fraction, expected / 4.0) << "step " << i + 1;
    fractions += fraction;
  }
  EXPECT_GT(fractions, 0.0);  // run.seed 7 mixes sampled and data micro-batches over the 16
  EXPECT_LT(fractions, 4.0);
}
