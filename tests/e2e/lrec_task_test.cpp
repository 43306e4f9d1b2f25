// LREC / INT2.1 end to end (issue 17, ALGORITHMS.md §9): task distill with a lora and quant
// section trains LoRA adapters on the INT2-quantized copy of a tiny trained model to match the
// dense model (the frozen distill.target) by forward KL + ce_weight x CE. The loss falls, the
// frozen base (dense and packed params) stays bitwise as loaded, the first step's loss equals
// KL + w·CE computed by a naive double loop from plain forwards of the dense model and of a copy
// whose Linears were quantized by §9's formula in the test, a stopped run resumes bitwise, and
// bad settings fail naming the field.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <unistd.h>

#include "tests/support/distill_fixture.h"
#include "tests/support/reference.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing::max_abs_diff;
using anvil::testing::metric;

namespace {

// The tiny Llama trained 150 steps at lr 0.02 (its Linears well away from their small init, so
// that int2 costs it a clear divergence from its dense self; 30 steps leave ~1e-4 nats), built
// once per test process in its own directory, removed at exit.
const anvil::testing::TinyRun& tiny() {
  static const anvil::testing::TinyRun run = [] {
    anvil::testing::TinyRun r = anvil::testing::make_tiny_run("lrec_" + std::to_string(getpid()));
    Trainer target(load_run_config(r.config, {"run.out_dir=" + r.dir + "/target", "training.steps=150",
                                              "optimizer.lr=0.02", "training.eval_every=0", "checkpoint.resume=none"}),
                   TrainerMode::Quiet);
    target.train();
    return r;
  }();
  static const struct RemoveAtExit {
    ~RemoveAtExit() { std::filesystem::remove_all(run.dir); }
  } remove_at_exit;
  return run;
}
std::string dense_dir() { return tiny().dir + "/target"; }

constexpr double kCeWeight = 0.5;
constexpr int64_t kBlock = 32;  // the tiny model's Linears read 32 or 64 inputs

// The student: the tiny model itself (model.init_from), quantized to int2 in groups of 32 with
// LoRA on LREC's seven projections; the teacher: the same model dense.
RunConfig lrec_config(const std::string& label, const std::vector<std::string>& extra = {}) {
  return anvil::testing::distill_run_config(
      tiny(), label,
      {"model={init_from: " + dense_dir() + "}",
       "lora.modules=[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]", "lora.r=8", "lora.alpha=32",
       "lora.dropout=0.05", "quant.scheme=int2", "quant.block=" + std::to_string(kBlock),
       "distill.ce_weight=" + std::to_string(kCeWeight), "optimizer.lr=0.01", "training.eval_every=0",
       "checkpoint.every=0"},
      extra);
}

bool is_adapter(const std::string& name) { return name.find(".lora_") != std::string::npos; }

uint64_t bits(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

// §9's group-wise asymmetric int2 of one row's group, written out in f32 as the formula reads
// (rint: round half to even), replaced by its dequantized values ŵ = s·(q − z).
void fake_quantize_int2(float* w, int64_t n) {
  float lo = w[0], hi = w[0];
  for (int64_t i = 1; i < n; ++i) lo = std::min(lo, w[i]), hi = std::max(hi, w[i]);
  const float qmax = 3.0f;
  const float s = std::max(hi - lo, 1e-5f) / qmax;
  const float z = std::min(std::max(std::rint(-lo / s), 0.0f), qmax);
  for (int64_t i = 0; i < n; ++i) {
    const float q = std::min(std::max(std::rint(w[i] / s) + z, 0.0f), qmax);
    w[i] = s * (q - z);
  }
}

// log-softmax of one row, in double.
std::vector<double> log_softmax(const float* z, int64_t V) {
  double mx = -INFINITY, sum = 0;
  for (int64_t v = 0; v < V; ++v) mx = std::max(mx, static_cast<double>(z[v]));
  for (int64_t v = 0; v < V; ++v) sum += std::exp(z[v] - mx);
  std::vector<double> out(V);
  for (int64_t v = 0; v < V; ++v) out[v] = z[v] - mx - std::log(sum);
  return out;
}

// The first step's loss: per micro-batch the mean over its scored tokens of KL(p_dense ‖ q_int2)
// + w·(−log q_int2(target)), averaged over the step's micro-batches. The fresh adapters (B = 0)
// add nothing, dropout or not, so the student is the fake-quantized dense model.
double naive_first_step(const RunConfig& config) {
  anvil::testing::FirstStepInputs in(config);
  const RunConfig& c = in.config;
  LoadedModel student = load_model(c.distill.target);
  int quantized = 0;
  for (Param* p : student.model->params()) {
    const std::string& n = p->name;
    if (n.find("_proj.weight") == std::string::npos) continue;  // q, k, v, o, gate, up, down: all-linear less lm_head
    const int64_t rows = p->value.size(0), cols = p->value.size(1);
    EXPECT_EQ(cols % kBlock, 0) << n;
    float* w = p->value.data<float>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < cols; g += kBlock) fake_quantize_int2(w + r * cols + g, kBlock);
    ++quantized;
  }
  EXPECT_EQ(quantized, 7 * c.model.num_hidden_layers);
  const int64_t M = c.training.grad_accum_steps, V = in.target.model->config().vocab_size;
  double loss = 0;
  for (int64_t m = 0; m < M; ++m) {
    const Batch batch = in.loader.next();
    Cache cs, ct;
    const Tensor zs = student.model->forward(batch.ids, cs).contiguous();
    const Tensor zt = in.target.model->forward(batch.ids, ct).contiguous();
    const int32_t* labels = batch.targets.data<int32_t>();
    double sum = 0, count = 0;
    for (int64_t row = 0; row < batch.targets.numel(); ++row) {
      if (labels[row] == c.training.ignore_index) continue;
      const std::vector<double> lq = log_softmax(zs.data<float>() + row * V, V);
      const std::vector<double> lp = log_softmax(zt.data<float>() + row * V, V);
      double kl = 0;
      for (int64_t v = 0; v < V; ++v) kl += std::exp(lp[v]) * (lp[v] - lq[v]);
      sum += kl - kCeWeight * lq[labels[row]];
      count += 1;
    }
    loss += sum / count / static_cast<double>(M);
  }
  return loss;
}

}  // namespace

TEST(LrecTask, AdaptersRecoverTheInt2ModelTowardsTheDenseOne) {
  // 30 steps at lr 5e-3: how far int2 moves the tiny model from its dense self depends on the CPU's
  // kernels (its 150 training steps round differently under AVX-512), and 12 steps at 1e-2 left the
  // divergence within 3% of where it began on an AVX-512 Xeon; there this setting cuts it to 0.42x.
  Trainer t(lrec_config("train", {"training.steps=30", "optimizer.lr=0.005"}), TrainerMode::Quiet);
  std::map<std::string, Tensor> before;
  int adapters = 0, packed = 0;
  for (Param* p : t.model().params()) {
    before[p->name] = p->value.clone();
    EXPECT_EQ(p->grad.defined(), is_adapter(p->name)) << p->name;  // the base costs no gradient memory
    adapters += is_adapter(p->name);
    packed += p->value.dtype() == DType::U8;
  }
  const int64_t layers = t.model().config().num_hidden_layers;
  EXPECT_EQ(adapters, 2 * 7 * layers);
  EXPECT_EQ(packed, 7 * layers);  // every adapted Linear's base is int2 codes
  // The held-out divergence (deterministic: the validation loss less w·val_ce, the student's own
  // LM loss, logged beside it) falls as the adapters learn.
  auto val_ce = [&]() -> double {
    for (const auto& [k, v] : t.evaluation_metrics())
      if (k == "ce") return v;
    ADD_FAILURE() << "no ce evaluation metric";
    return NAN;
  };
  const double before_val = t.evaluate(4), before_ce = val_ce();
  const double before_kl = before_val - kCeWeight * before_ce;
  t.train();
  ASSERT_EQ(t.history().size(), 30u);
  const double after_val = t.evaluate(4), after_ce = val_ce();
  const double after_kl = after_val - kCeWeight * after_ce;
  EXPECT_GT(before_kl, 0.0);
  EXPECT_GT(after_kl, 0.0);
  EXPECT_LT(after_kl, 0.8 * before_kl) << "KL before " << before_kl << ", after " << after_kl << "; CE before "
                                       << before_ce << ", after " << after_ce;
  EXPECT_LT(after_val, before_val);
  for (const StepRecord& r : t.history()) EXPECT_GT(metric(r, "ce"), 0.0);
  for (Param* p : t.model().params()) {
    const bool moved = max_abs_diff(p->value, before.at(p->name)) > 0;
    // Every B moves off zero; the frozen base, packed codes and scales included, stays bitwise.
    if (!is_adapter(p->name) || p->name.find("lora_B") != std::string::npos)
      EXPECT_EQ(moved, is_adapter(p->name)) << p->name;
  }
}

// Tolerance: the student's int2 Linears run through the quantized kernels and the reference's
// through a dense matmul of the same ŵ (other summation orders, f32: ~1e-6 relative on logits);
// the losses' f32 log-softmax over V = 512 carries at most ~V·2^-24 ≈ 3e-5 relative.
TEST(LrecTask, FirstStepLossIsKLPlusWeightedCE) {
  const RunConfig config = lrec_config("naive", {"training.steps=1"});
  Trainer t(config, TrainerMode::Quiet);
  t.train();
  const double expected = naive_first_step(config);
  EXPECT_NEAR(t.history()[0].loss, expected, 1e-4 * expected);
  EXPECT_GT(expected, 0.01);
  // The divergence alone (ce_weight 0) is a different number: the CE term is really in.
  Trainer kl_only(lrec_config("naive_kl", {"training.steps=1", "distill.ce_weight=0"}), TrainerMode::Quiet);
  kl_only.train();
  const double ce = metric(t.history()[0], "ce");
  EXPECT_NEAR(t.history()[0].loss, kl_only.history()[0].loss + kCeWeight * ce, 1e-5 * expected);
}

TEST(LrecTask, ResumeIsBitwise) {
  // 6 steps straight equal 3 steps, a checkpoint, and 3 resumed steps (dropout's draws included).
  const std::string ckpt = tiny().dir + "/resume_split_ckpt";
  Trainer straight(lrec_config("resume_straight", {"training.steps=6"}), TrainerMode::Quiet);
  straight.train();
  {
    Trainer first(lrec_config("resume_split", {"training.steps=6", "checkpoint.dir=" + ckpt}), TrainerMode::Quiet);
    first.train(3);
  }
  Trainer second(lrec_config("resume_split", {"training.steps=6", "checkpoint.dir=" + ckpt, "checkpoint.resume=auto"}),
                 TrainerMode::Quiet);
  EXPECT_EQ(second.step(), 3);
  second.train();
  ASSERT_EQ(second.history().size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(bits(second.history()[i].loss), bits(straight.history()[3 + i].loss)) << "step " << 4 + i;
    EXPECT_EQ(bits(second.history()[i].grad_norm), bits(straight.history()[3 + i].grad_norm)) << "step " << 4 + i;
  }
  std::map<std::string, const Param*> by_name;
  for (Param* p : straight.model().params()) by_name[p->name] = p;
  for (Param* p : second.model().params()) EXPECT_EQ(max_abs_diff(p->value, by_name.at(p->name)->value), 0.0) << p->name;
}

TEST(LrecTask, BadSettingsFailNamingTheField) {
  auto fails_with = [](const std::vector<std::string>& sets, const std::string& expected) {
    const std::string e = error_of([&] { lrec_config("bad", sets); });
    EXPECT_NE(e.find(expected), std::string::npos) << "expected '" << expected << "' in: " << e;
  };
  fails_with({"distill.drafter=eagle", "distill.ce_weight=0"}, "distill.drafter is eagle");
  fails_with({"distill.drafter=parallelspec"}, "lora.modules");
  fails_with({"distill.ce_weight=-1"}, "distill.ce_weight");
  fails_with({"distill.ce_weight=-1"}, "must be finite and >= 0");
  fails_with({"distill.loss=ce"}, "loss is ce");
  fails_with({"distill.drafter=eagle", "distill.ce_weight=1"}, "an EAGLE drafter's loss is its own");
}
