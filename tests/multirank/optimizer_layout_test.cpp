// Every optimizer under every parallel layout against the single-process run (DESIGN.md's
// layout invariant): AdamW, Muon, SOAP and COSMOS on a small Llama (GQA; untied with biases,
// and tied) take 5 steps of the same global batch under dp+ZeRO-1/2, tp2 and dp2 x tp2; the
// final params and the full-shape state() must equal the single-process optimizer's. Every
// rank also runs the single-process reference locally. Also: a checkpoint's state resumes
// in another layout, per-rank state bytes (COSMOS's mn + r(m+n) + r^2 per matrix, on its
// owner only), and the trainer's wiring (dp4 + ZeRO-2 with SOAP, checkpoint counters, resume
// by one process). Runs at 2 and 4 ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include "models/transformer.h"
#include "optim/cosmos.h"
#include "parallel/grid.h"
#include "parallel/mpi_communicator.h"
#include "tests/support/reference.h"
#include "tests/support/tiny_run.h"
#include "trainer/checkpoint.h"
#include "trainer/optimizer_factory.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::max_rel_diff;
using anvil::testing::random_ids;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<Communicator> world() {
  static std::shared_ptr<Communicator> w = MpiCommunicator::world();
  return w;
}
bool is_root() { return world()->rank() == 0; }

constexpr uint64_t kSeed = 99;
constexpr int64_t kGlobalBatch = 8, kT = 16;
constexpr int kSteps = 5;
constexpr double kTolerance = 1e-5;
constexpr double kSameInputTolerance = 1e-6;

// Heads, KV heads, MLP width and vocabulary divide by 2.
ModelConfig small_llama(bool tied) {
  ModelConfig c = ModelConfig::llama();
  c.vocab_size = 132;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.intermediate_size = 96;
  c.max_position_embeddings = 32;
  c.tie_word_embeddings = tied;
  c.attention_bias = c.mlp_bias = !tied;
  return c;
}

struct Model {
  const char* name;
  ModelConfig config;
};
const std::vector<Model>& models() {
  static const std::vector<Model> m = {{"llama_gqa_untied", small_llama(false)}, {"llama_gqa_tied", small_llama(true)}};
  return m;
}

// Each optimizer with its usual learning rate and non-trivial settings: SOAP refreshes its
// bases every 2 steps (twice in 5 calls), COSMOS tracks a rank-8 subspace of 64- and 96-wide
// matrices (so both its Adam and its Newton–Schulz parts act).
struct Opt {
  const char* name;
  double lr;
  OptimizerSection section;
};
std::vector<Opt> optimizers() {
  std::vector<Opt> out;
  for (const char* name : {"adamw", "muon", "soap", "cosmos"}) {
    OptimizerSection o;
    o.name = name;
    o.adamw.weight_decay = 0.1;
    if (getenv("EPS")) o.adamw.eps = atof(getenv("EPS"));
    o.adamw_lr_ratio = o.name == "muon" ? 0.015 : 1.0;
    o.muon.weight_decay = 0.01;
    o.soap.precondition_frequency = 2;
    o.cosmos.rank = 8;
    o.cosmos.weight_decay = 0.1;
    out.push_back({name, o.name == "muon" ? 0.02 : (getenv("LR") ? atof(getenv("LR")) : 1e-3), o});
  }
  return out;
}

struct Layout {
  const char* name;
  int dp, tp, zero;
};
// The layouts that fit this world: groups of dp * tp consecutive ranks run side by side.
std::vector<Layout> layouts() {
  std::vector<Layout> all = {{"dp4+zero1", 4, 1, 1}, {"dp4+zero2", 4, 1, 2}, {"dp2+zero1", 2, 1, 1},
                             {"dp2+zero2", 2, 1, 2}, {"tp2", 1, 2, 0},       {"dp2xtp2+zero1", 2, 2, 1},
                             {"dp2xtp2+zero2", 2, 2, 2}, {"dp2xtp2", 2, 2, 0}};
  std::vector<Layout> fit;
  const int n = world()->size();
  for (const Layout& l : all)
    if (n % (l.dp * l.tp) == 0 && !(n == 4 && l.dp == 2 && l.tp == 1)) fit.push_back(l);
  return fit;
}

// The process grid of a layout (built once per layout: every split is a collective).
ProcessGrid& grid_of(const Layout& l) {
  static std::map<std::string, std::unique_ptr<ProcessGrid>> cache;
  auto& g = cache[l.name];
  if (!g) {
    const int size = l.dp * l.tp;
    std::shared_ptr<Communicator> group(world()->split(world()->rank() / size, world()->rank()));
    g = std::make_unique<ProcessGrid>(group, GridDims{l.dp, l.tp});
  }
  return *g;
}

struct Batch {
  Tensor ids, targets;
};
Batch global_batch(const ModelConfig& c, int step) {
  Batch b{random_ids({kGlobalBatch, kT}, static_cast<int32_t>(c.vocab_size), 500 + 2 * step),
          random_ids({kGlobalBatch, kT}, static_cast<int32_t>(c.vocab_size), 501 + 2 * step)};
  for (int64_t i = 0; i < b.targets.numel(); i += 7) b.targets.data<int32_t>()[i] = -100;  // some ignored
  return b;
}

int64_t loss_tokens(const Tensor& targets) {
  int64_t n = 0;
  for (int64_t i = 0; i < targets.numel(); ++i) n += targets.data<int32_t>()[i] != -100;
  return n;
}

// The randomized weights every run starts from (full shapes).
std::unique_ptr<TransformerLM> initial_model(const ModelConfig& c) {
  auto m = std::make_unique<TransformerLM>(c);
  m->init_weights(kSeed);
  if (!getenv("NORAND")) anvil::testing::randomize_params(m->params());
  return m;
}

std::map<std::string, Tensor> by_name(const std::vector<NamedTensor>& ts) {
  std::map<std::string, Tensor> out;
  for (const NamedTensor& t : ts) out[t.name] = t.tensor.clone();
  return out;
}

// One process: the model and its optimizer, trained on the whole global batch.
struct Single {
  std::unique_ptr<TransformerLM> model;
  std::unique_ptr<Optimizer> optimizer;
  Single(const ModelConfig& c, const OptimizerSection& o) : model(initial_model(c)) {
    optimizer = make_optimizer(o, model->params());
  }
  void step(int s, double lr, double clip) {
    const Batch b = global_batch(model->config(), s);
    model->zero_grad();
    Cache cache;
    model->forward_loss(b.ids, b.targets, cache);
    model->backward_loss(cache);
    if (clip > 0) clip_grad_norm(model->params(), clip);
    optimizer->step(lr);
  }
};

// The same under a layout: this rank's shard of the model, its dp slice of every batch.
struct Distributed {
  const Layout layout;
  ProcessGrid& grid;
  std::unique_ptr<TransformerLM> model;
  std::unique_ptr<DataParallel> dp;
  std::unique_ptr<Optimizer> optimizer;
  Communicator* tp() const { return layout.tp > 1 ? &grid.comm(Axis::TP) : nullptr; }

  Distributed(const Layout& l, const ModelConfig& c, const OptimizerSection& o, TransformerLM& start)
      : layout(l), grid(grid_of(l)) {
    model = std::make_unique<TransformerLM>(c, ModelLayout{tp()});
    for (Param* p : model->params()) p->value.copy_(take_shard(*p, start.param(p->name).value));
    if (l.dp > 1) {
      DataParallelConfig dc;
      dc.bucket_mb = 0.02;  // several padded buckets, params split across ZeRO shards
      dc.zero_stage = l.zero;
      dp = std::make_unique<DataParallel>(model->params(), grid.comm(Axis::DP), dc);
    }
    optimizer = make_optimizer(o, model->params(), OptimizerLayout{dp.get(), tp()});
  }
  void step(int s, double lr, double clip) {
    const Batch b = global_batch(model->config(), s);
    const int64_t rows = kGlobalBatch / layout.dp, first = grid.rank(Axis::DP) * rows;
    const Tensor ids = b.ids.slice(0, first, first + rows).contiguous();
    const Tensor targets = b.targets.slice(0, first, first + rows).contiguous();
    model->zero_grad();
    Cache cache;
    model->forward_loss(ids, targets, cache);
    model->backward_loss(cache, 1.0f, dp ? all_reduce_sum(dp->comm(), loss_tokens(targets)) : -1);
    if (dp) dp->finish_grad_sync();
    if (clip > 0) {
      if (dp) dp->clip_grad_norm(clip);
      else clip_grad_norm(model->params(), clip);
    }
    optimizer->step(lr);
  }
};

// Steps with the gradients `ref` holds (the single-process run's, after its step) in place of
// this layout's own: the layout's optimizer then sees bit-identical input, so any difference
// from the single-process step is the distributed optimizer's.
void step_with_gradients_of(Distributed& d, TransformerLM& ref, double lr) {
  for (Param* p : d.model->params()) {
    const Tensor g = take_shard(*p, ref.param(p->name).grad);
    p->grad.copy_(g);
    if (d.dp && d.dp->zero_stage() == 2) {  // ZeRO-2 steps from the reduced shard, not the grad views
      const DataParallel::Segment seg = d.dp->segment_of(p, d.dp->comm().rank());
      if (seg.length == 0) continue;
      const int64_t in_bucket = seg.shard_offset - d.dp->buckets()[seg.bucket].shard_base;
      d.dp->shard_grad(seg.bucket).slice(0, in_bucket, in_bucket + seg.length)
          .copy_(g.view({-1}).slice(0, seg.param_offset, seg.param_offset + seg.length));
    }
  }
  d.optimizer->step(lr);
}

struct Errors {
  double param = 0, state = 0, moved = 1e9;
  std::string worst_param, worst_state;
};

// Params (this rank's shards) and the gathered state against the single-process run.
Errors compare(Distributed& d, Single& ref, const std::vector<Tensor>& initial, const std::string& label,
               double tolerance = kTolerance) {
  Errors e;
  const std::vector<Param*> params = d.model->params();
  for (size_t i = 0; i < params.size(); ++i) {
    const Param* p = params[i];
    const double err = max_rel_diff(p->value, take_shard(*p, ref.model->param(p->name).value));
    EXPECT_LE(err, tolerance) << label << " param " << p->name;
    if (err >= e.param) e.param = err, e.worst_param = p->name;
    e.moved = std::min(e.moved, max_rel_diff(p->value, initial[i]));
  }
  const std::map<std::string, Tensor> mine = by_name(d.optimizer->state()), theirs = by_name(ref.optimizer->state());
  EXPECT_EQ(mine.size(), theirs.size()) << label;
  for (const auto& [name, t] : theirs) {
    const auto it = mine.find(name);
    if (it == mine.end()) {
      ADD_FAILURE() << label << ": state " << name << " is missing";
      continue;
    }
    EXPECT_EQ(it->second.shape(), t.shape()) << label << " state " << name;
    if (it->second.shape() != t.shape()) continue;
    const double err = max_rel_diff(it->second, t);
    EXPECT_LE(err, tolerance) << label << " state " << name;
    if (err >= e.state) e.state = err, e.worst_state = name;
  }
  return e;
}

// The distributed optimizer alone: fed the single-process gradients, every layout takes the
// single-process steps to fp32 rounding (the same code on the same full matrices).
void expect_same_steps_from_the_same_gradients(const Opt& o) {
  for (const Model& mc : models()) {
    for (const Layout& l : layouts()) {
      Single ref(mc.config, o.section);
      Distributed d(l, mc.config, o.section, *ref.model);
      std::vector<Tensor> initial;
      for (Param* p : d.model->params()) initial.push_back(p->value.clone());
      for (int s = 0; s < kSteps; ++s) {
        ref.step(s, o.lr, 0);
        step_with_gradients_of(d, *ref.model, o.lr);
      }
      const std::string label = std::string(o.name) + " " + mc.name + " " + l.name + " (single-process gradients)";
      const Errors e = compare(d, ref, initial, label, kSameInputTolerance);
      EXPECT_GE(e.moved, 100 * kTolerance) << label << ": some param barely moved";
      if (is_root())
        std::printf("[%s] worst param %.1e (%s), worst state %.1e (%s)\n", label.c_str(), e.param,
                    e.worst_param.c_str(), e.state, e.worst_state.c_str());
    }
  }
}

// clip > 0: clip the gradients to that global norm, in the dp-only layouts.
void expect_layouts_match_one_process(const Opt& o, double clip = 0) {
  for (const Model& mc : models()) {
    for (const Layout& l : layouts()) {
      if (clip > 0 && l.tp > 1) continue;  // the tp-aware clip belongs to the trainer
      Single ref(mc.config, o.section);
      Distributed d(l, mc.config, o.section, *ref.model);
      std::vector<Tensor> initial;
      for (Param* p : d.model->params()) initial.push_back(p->value.clone());
      for (int s = 0; s < kSteps; ++s) {
        ref.step(s, o.lr, clip);
        d.step(s, o.lr, clip);
      }
      const std::string label = std::string(o.name) + " " + mc.name + " " + l.name;
      const Errors e = compare(d, ref, initial, label);
      // The steps are visible at this tolerance: every param moved by far more than it.
      EXPECT_GE(e.moved, 100 * kTolerance) << label << ": some param barely moved";
      if (is_root())
        std::printf("[%s] %d steps: worst param %.1e (%s), worst state %.1e (%s), least moved %.1e\n", label.c_str(),
                    kSteps, e.param, e.worst_param.c_str(), e.state, e.worst_state.c_str(), e.moved);
    }
  }
}

const Opt& optimizer_named(const std::string& name) {
  static const std::vector<Opt> all = optimizers();
  for (const Opt& o : all)
    if (name == o.name) return o;
  ANVIL_FAIL("no optimizer ", name);
}

}  // namespace

TEST(OptimizerExactness, AdamW) { expect_same_steps_from_the_same_gradients(optimizer_named("adamw")); }
TEST(OptimizerExactness, Muon) { expect_same_steps_from_the_same_gradients(optimizer_named("muon")); }
TEST(OptimizerExactness, Soap) { expect_same_steps_from_the_same_gradients(optimizer_named("soap")); }
TEST(OptimizerExactness, Cosmos) { expect_same_steps_from_the_same_gradients(optimizer_named("cosmos")); }

TEST(OptimizerLayouts, AdamW) { expect_layouts_match_one_process(optimizer_named("adamw")); }
TEST(OptimizerLayouts, Muon) { expect_layouts_match_one_process(optimizer_named("muon")); }
TEST(OptimizerLayouts, Soap) { expect_layouts_match_one_process(optimizer_named("soap")); }
TEST(OptimizerLayouts, Cosmos) { expect_layouts_match_one_process(optimizer_named("cosmos")); }

// Under ZeRO, DataParallel's clip scales only each rank's shard of the gradients; the matrix
// owners must step with the clipped gradient (they collect it from the shards).
TEST(OptimizerLayouts, MatrixOwnersStepWithTheClippedGradient) {
  for (const char* name : {"muon", "cosmos"}) expect_layouts_match_one_process(optimizer_named(name), 0.05);
}

// A checkpoint written by one process resumes in every layout: state() of the single-process
// optimizer after 3 steps is loaded with load_state, and 2 more steps match.
TEST(OptimizerLayouts, SingleProcessStateResumesInEveryLayout) {
  const Model& mc = models()[0];
  for (const Opt& o : optimizers()) {
    for (const Layout& l : layouts()) {
      Single ref(mc.config, o.section);
      for (int s = 0; s < 3; ++s) ref.step(s, o.lr, 0);
      Distributed d(l, mc.config, o.section, *ref.model);  // starts from the params after 3 steps
      std::vector<NamedTensor> full = d.optimizer->state();
      const std::map<std::string, Tensor> saved = by_name(ref.optimizer->state());
      for (NamedTensor& t : full) t.tensor.copy_(saved.at(t.name));  // what load_checkpoint does
      d.optimizer->load_state(full);
      d.optimizer->set_step_count(ref.optimizer->step_count());
      std::vector<Tensor> initial;
      for (Param* p : d.model->params()) initial.push_back(p->value.clone());
      for (int s = 3; s < 5; ++s) {
        ref.step(s, o.lr, 0);
        d.step(s, o.lr, 0);
      }
      const std::string label = std::string(o.name) + " resumed in " + l.name;
      const Errors e = compare(d, ref, initial, label);
      if (is_root())
        std::printf("[%s] worst param %.1e, worst state %.1e\n", label.c_str(), e.param, e.state);
    }
  }
}

// Per-rank state bytes: every rank's figure is its own state_bytes(); they sum to the single
// process's total (dp only: AdamW moments are packed without padding, matrices held once; with
// tp, tp-replicated AdamW params keep a copy per tp rank); no rank holds more than its share
// plus one matrix's. COSMOS's owners hold mn + r(m+n) + r^2 numbers per m x n matrix.
TEST(OptimizerMemory, PerRankStateBytesSumToTheSingleProcessTotal) {
  for (const Opt& o : optimizers()) {
    for (const Layout& l : layouts()) {
      const ModelConfig& c = models()[0].config;
      Single ref(c, o.section);
      Distributed d(l, c, o.section, *ref.model);
      auto* dist = dynamic_cast<DistributedOptimizer*>(d.optimizer.get());
      ASSERT_NE(dist, nullptr);
      const std::vector<int64_t>& per_rank = dist->state_bytes_per_rank();
      ASSERT_EQ(per_rank.size(), static_cast<size_t>(l.dp * l.tp));
      const int me = d.grid.rank(Axis::DP) * l.tp + d.grid.rank(Axis::TP);
      EXPECT_EQ(per_rank[me], static_cast<int64_t>(d.optimizer->state_bytes()));
      int64_t sum = 0, replicated_adamw = 0;
      for (int64_t b : per_rank) sum += b;
      const std::set<std::string> matrices = [&] {
        std::set<std::string> s;
        for (const auto& owner : dist->owners()) s.insert(owner.name);
        return s;
      }();
      for (Param* p : d.model->params())
        if (!p->shard.sharded() && !matrices.count(p->name)) replicated_adamw += 2 * p->value.nbytes();
      const int64_t single = static_cast<int64_t>(ref.optimizer->state_bytes());
      EXPECT_EQ(sum, single + (l.tp - 1) * replicated_adamw) << o.name << " " << l.name;
      for (int64_t b : per_rank) EXPECT_LT(b, single) << o.name << " " << l.name << ": the state is not split";
      if (std::string(o.name) == "cosmos" && l.zero > 0) {
        // The owners' matrix state, at full logical shape: mn + r(m+n) + r^2 numbers each.
        std::vector<int64_t> matrix_bytes(per_rank.size(), 0);
        for (const auto& owner : dist->owners()) {
          const Shape s = logical_shape(ref.model->param(owner.name));
          const int64_t m = s[0], n = s[1], r = std::min<int64_t>(o.section.cosmos.rank, n);
          matrix_bytes[owner.dp_rank * l.tp + owner.tp_rank] += (m * n + r * (m + n) + r * r) * 4;
        }
        // This rank's AdamW moments: its ZeRO pieces of the non-matrix params (2 moments each).
        int64_t adamw = 0;
        for (Param* p : d.model->params())
          if (!matrices.count(p->name)) adamw += 2 * 4 * d.dp->segment_of(p, d.grid.rank(Axis::DP)).length;
        EXPECT_EQ(per_rank[me], matrix_bytes[me] + adamw) << l.name;
      }
      const std::string log = describe_optimizer_groups(*d.optimizer);
      EXPECT_NE(log.find("optimizer state bytes per rank"), std::string::npos) << log;
      if (is_root()) {
        std::printf("[%s %s] state bytes per rank:", o.name, l.name);
        for (int64_t b : per_rank) std::printf(" %ld", long(b));
        std::printf(" (single process %ld)\n", long(single));
      }
    }
  }
}

// The trainer's construction site and checkpoints: dp = the world size with ZeRO-2 and SOAP
// follows the single-process run, its checkpoint records every rank's state bytes, and one
// process resumes it exactly.
TEST(OptimizerTrainer, SoapUnderZeroTwoTrainsSavesAndResumesInOneProcess) {
  const int dp_all = world()->size();
  const std::string name = "optimizer_layouts";
  anvil::testing::TinyRun run;
  if (is_root()) run = anvil::testing::make_tiny_run(name);
  world()->barrier();
  const std::string dir = (fs::path(::testing::TempDir()) / ("anvil_" + name)).string();
  auto config = [&](const std::string& label, int dp, std::vector<std::string> extra) {
    std::vector<std::string> sets = {"run.out_dir=" + dir + "/out_" + label + "_rank" + std::to_string(world()->rank()),
                                     "checkpoint.resume=none", "optimizer.name=soap",
                                     "optimizer.soap_precondition_frequency=2", "run.threads=1",
                                     "data.train=" + dir + "/gpl.h5", "training.steps=5",
                                     "training.micro_batch_size=" + std::to_string(8 / dp), "training.eval_every=0",
                                     "checkpoint.every=0", "checkpoint.keep=0", "parallel.dp=" + std::to_string(dp),
                                     "optimizer.zero=" + std::string(dp > 1 ? "2" : "0"), "parallel.bucket_mb=0.05"};
    sets.insert(sets.end(), extra.begin(), extra.end());
    return load_run_config(dir + "/run.yaml", sets);
  };
  Trainer straight(config("single", 1, {}), TrainerMode::Quiet);
  straight.train();
  const std::string shared = dir + "/ckpt";
  {
    Trainer t(config("dp", dp_all, {"checkpoint.dir=" + shared}), TrainerMode::Quiet, world());
    EXPECT_NE(dynamic_cast<DistributedOptimizer*>(&t.optimizer()), nullptr);
    t.train(3);
    for (size_t i = 0; i < 3; ++i)
      EXPECT_LT(std::fabs(t.history()[i].loss - straight.history()[i].loss) / straight.history()[i].loss, 1e-5)
          << "step " << i + 1;
  }
  const CheckpointMeta meta = read_checkpoint_meta(shared + "/step_00000003");
  int64_t sum = 0;
  for (int k = 0; k < dp_all; ++k) {
    const auto it = meta.counters.find("optimizer.state_bytes.rank" + std::to_string(k));
    ASSERT_NE(it, meta.counters.end()) << k;
    EXPECT_GT(it->second, 0);
    sum += it->second;
  }
  EXPECT_EQ(meta.counters.at("optimizer.state_bytes.total"), sum);
  EXPECT_EQ(sum, static_cast<int64_t>(straight.optimizer().state_bytes()));
  Trainer resumed(config("resume", 1, {"checkpoint.resume=" + shared + "/step_00000003"}), TrainerMode::Quiet);
  ASSERT_EQ(resumed.step(), 3);
  resumed.train();
  ASSERT_EQ(resumed.history().size(), 2u);
  for (size_t i = 0; i < 2; ++i)
    EXPECT_LT(std::fabs(resumed.history()[i].loss - straight.history()[3 + i].loss) / straight.history()[3 + i].loss,
              1e-5)
        << "step " << 4 + i;
  for (Param* p : resumed.model().params())
    EXPECT_LE(max_rel_diff(p->value, straight.model().param(p->name).value), kTolerance) << p->name;
}
