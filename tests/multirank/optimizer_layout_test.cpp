// Every optimizer under every parallel layout against the single-process run (DESIGN.md's
// layout invariant), on a small Llama (GQA; untied with biases, and tied); every rank also
// runs the single-process reference locally (GPT-2 too in the exactness tests). Layouts: dp (ZeRO-1, ZeRO-2), tp2 and dp2 x tp2
// (ZeRO 0, 1, 2), as many as fit the world (2 or 4 ranks).
//  - OptimizerExactness: fed the single-process gradients, AdamW, Muon, SOAP and COSMOS at their
//    default settings take the single-process steps in every layout: after 5 steps every param
//    and every full-shape state() tensor match (bit-identical here; asserted to 1e-6).
//  - OptimizerLayouts: end to end (each layout's own forward, backward and gradient reduction),
//    5 steps match within 1e-5, in settings where each step is a well-conditioned function of
//    its gradient (see well_conditioned()); also with clipping active, and resuming a
//    single-process state in every layout.
//  - OptimizerMemory: per-rank state bytes (COSMOS: mn + r(m+n) + r^2 per matrix, on its owner).
//  - OptimizerTrainer: the trainer's wiring (ZeRO-2 + Muon, checkpoint counters, resharding).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>

#include "models/transformer.h"
#include "parallel/grid.h"
#include "tests/support/layout_run.h"
#include "tests/support/mpi_world.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"
#include "tests/support/tiny_run.h"
#include "trainer/checkpoint.h"
#include "trainer/optimizer_factory.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::Layout;
using anvil::testing::is_root;
using anvil::testing::max_rel_diff;
using anvil::testing::random_ids;
using anvil::testing::small_gpt2;
using anvil::testing::small_llama;
using anvil::testing::world;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kSeed = 99;
constexpr int64_t kGlobalBatch = 8, kT = 16;
constexpr int kSteps = 5;
constexpr double kTolerance = 1e-5;           // max|diff| / max|ref| per tensor
constexpr double kSameInputTolerance = 1e-6;  // the optimizer alone (0 measured)

struct Model {
  const char* name;
  ModelConfig config;
};
const std::vector<Model>& models() {
  static const std::vector<Model> m = {{"llama_gqa_untied", small_llama(false)}, {"llama_gqa_tied", small_llama(true)}};
  return m;
}
// GPT-2 too where the gradients are the same (end to end, its key bias has an identically zero
// gradient whose fp32 noise Adam turns into +-lr steps: see tensor_parallel_test).
std::vector<Model> models_with_gpt2() {
  std::vector<Model> m = models();
  m.push_back({"gpt2", small_gpt2()});
  return m;
}

struct Opt {
  std::string name;
  double lr;
  OptimizerSection section;
};
const char* const kOptimizers[] = {"adamw", "muon", "soap", "cosmos"};

// The defaults with the usual learning rates and non-trivial settings: SOAP refreshes its bases
// every 2 steps (twice in 5 calls), COSMOS tracks a rank-8 subspace of 32- to 96-wide matrices.
Opt defaults(const std::string& name) {
  OptimizerSection o;
  o.name = name;
  o.adamw.weight_decay = 0.1;
  o.adamw_lr_ratio = name == "muon" ? 0.015 : 1.0;
  o.muon.weight_decay = 0.01;
  o.soap.precondition_frequency = 2;
  o.cosmos.rank = 8;
  o.cosmos.weight_decay = 0.1;
  return {name, name == "muon" ? 0.02 : 1e-3, o};
}

// End to end, the layouts' gradients differ from one process's in fp32 summation order (~1e-6
// relative); compared at 1e-5 after 5 steps, each step must not amplify that by more than ~10x.
// At the defaults three updates do, and one process alone shows it (whole global batch vs the
// same batch accumulated as two halves, 5 steps: worst param difference, measured on this model):
//  - Adam at lr 1e-3 (AdamW; SOAP's, COSMOS's AdamW groups): 3.7e-6, and tp2 reaches 1e-5: an
//    element whose gradient is ~1e-5 of its tensor's largest moves by lr*g/(|g|+eps), so its
//    rounding noise becomes ~1% of its step. lr 1e-4 (as tensor_parallel_test): 4.2e-7.
//  - COSMOS's Newton-Schulz in emulated bf16: 9.8e-5 (rounding to 8 bits is discontinuous, and
//    1e-7 of noise flips roundings of 2^-8 relative size); in fp32: 4.7e-6.
//  - SOAP at eps 1e-8: 1.3e-3 after its first update already: a first Adam step is
//    M/sqrt(V) = sign(G') in the rotated basis, and eigenvectors of nearly equal eigenvalues
//    rotate by noise/gap, moving entries of G' across zero. eps 1e-2 (comparable to G''s
//    entries) makes the step a smooth function of G: 7.2e-6 at lr 1e-4, still moving every
//    matrix by ~4e-4 of its largest element in 5 steps.
// OptimizerExactness runs the defaults, with identical gradients.
Opt well_conditioned(const std::string& name) {
  Opt o = defaults(name);
  if (name != "muon") o.lr = 1e-4;
  o.section.adamw.eps = 1e-6;
  o.section.soap.eps = 1e-2;
  o.section.cosmos.newton_schulz.bf16 = false;
  return o;
}

// The layouts that fit this world: groups of dp * tp consecutive ranks run side by side.
std::vector<Layout> layouts() {
  // {dp, tp, pp, sp, zero}
  const std::vector<Layout> all = {{4, 1, 1, 1, 1}, {4, 1, 1, 1, 2}, {2, 1, 1, 1, 1}, {2, 1, 1, 1, 2},
                                   {1, 2, 1, 1, 0}, {2, 2, 1, 1, 0}, {2, 2, 1, 1, 1}, {2, 2, 1, 1, 2}};
  std::vector<Layout> fit;
  const int n = world()->size();
  for (const Layout& l : all)
    if (n % (l.dp * l.tp) == 0 && !(n == 4 && l.dp == 2 && l.tp == 1)) fit.push_back(l);  // at 4 ranks: dp4
  return fit;
}

// The process grid of a layout (built once per layout: every split is a collective).
ProcessGrid& grid_of(const Layout& l) {
  static std::map<std::string, std::unique_ptr<ProcessGrid>> cache;
  auto& g = cache[l.label()];
  if (!g) {
    const int size = l.dp * l.tp;
    std::shared_ptr<Communicator> group(world()->split(world()->rank() / size, world()->rank()));
    g = std::make_unique<ProcessGrid>(group, GridDims{l.dp, l.tp});
  }
  return *g;
}

struct TokenBatch {
  Tensor ids, targets;
};
TokenBatch global_batch(const ModelConfig& c, int step) {
  TokenBatch b{random_ids({kGlobalBatch, kT}, static_cast<int32_t>(c.vocab_size), 500 + 2 * step),
               random_ids({kGlobalBatch, kT}, static_cast<int32_t>(c.vocab_size), 501 + 2 * step)};
  for (int64_t i = 0; i < b.targets.numel(); i += 7) b.targets.data<int32_t>()[i] = -100;  // some ignored
  return b;
}

int64_t loss_tokens(const Tensor& targets) {
  int64_t n = 0;
  for (int64_t i = 0; i < targets.numel(); ++i) n += targets.data<int32_t>()[i] != -100;
  return n;
}

std::map<std::string, Tensor> by_name(const std::vector<NamedTensor>& ts) {
  std::map<std::string, Tensor> out;
  for (const NamedTensor& t : ts) out[t.name] = t.tensor.clone();
  return out;
}

// One process: the model (randomized weights) and its optimizer, on the whole global batch.
struct Single {
  std::unique_ptr<TransformerLM> model;
  std::unique_ptr<Optimizer> optimizer;
  Single(const ModelConfig& c, const OptimizerSection& o) : model(std::make_unique<TransformerLM>(c)) {
    model->init_weights(kSeed);
    anvil::testing::randomize_params(model->params());
    optimizer = make_optimizer(o, model->params());
  }
  // Returns the gradient norm before clipping.
  double step(int s, double lr, double clip) {
    const TokenBatch b = global_batch(model->config(), s);
    model->zero_grad();
    Cache cache;
    model->forward_loss(b.ids, b.targets, cache);
    model->backward_loss(cache);
    const double norm = clip_grad_norm(model->params(), clip);
    optimizer->step(lr);
    return norm;
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

  // Starts from `start`'s current params.
  Distributed(const Layout& l, const ModelConfig& c, const OptimizerSection& o, TransformerLM& start)
      : layout(l), grid(grid_of(l)) {
    model = std::make_unique<TransformerLM>(c, ModelLayout{tp()});
    for (Param* p : model->params()) p->value.copy_(take_shard(*p, start.param(p->name).value));
    if (l.dp > 1) {
      DataParallelConfig dc;
      dc.bucket_mb = 0.02;  // several padded buckets, so params straddle ZeRO shards
      dc.zero_stage = l.zero;
      dp = std::make_unique<DataParallel>(model->params(), grid.comm(Axis::DP), dc);
    }
    optimizer = make_optimizer(o, model->params(), OptimizerLayout{dp.get(), tp()});
  }
  // With its own gradients (clip > 0 only without tp: the tp-aware clip is the trainer's).
  void step(int s, double lr, double clip) {
    const TokenBatch b = global_batch(model->config(), s);
    const int64_t rows = kGlobalBatch / layout.dp, first = grid.rank(Axis::DP) * rows;
    const Tensor ids = b.ids.slice(0, first, first + rows).contiguous();
    const Tensor targets = b.targets.slice(0, first, first + rows).contiguous();
    model->zero_grad();
    Cache cache;
    model->forward_loss(ids, targets, cache);
    model->backward_loss(cache, 1.0f, dp ? all_reduce_sum(dp->comm(), loss_tokens(targets)) : -1);
    if (dp) {
      dp->finish_grad_sync();
      dp->clip_grad_norm(clip);
    } else {
      clip_grad_norm(model->params(), clip);
    }
    optimizer->step(lr);
  }
  // With the gradients `ref` holds (the single-process run's, after its step) in place of its
  // own, written where this layout's optimizer reads them: the optimizer alone is then tested.
  void step_with_gradients_of(TransformerLM& ref, double lr) {
    for (Param* p : model->params()) {
      const Tensor g = take_shard(*p, ref.param(p->name).grad);
      p->grad.copy_(g);
      if (!dp || dp->zero_stage() != 2) continue;  // ZeRO-2 steps from its reduced shard instead
      const DataParallel::Segment seg = dp->segment_of(p, dp->comm().rank());
      if (seg.length == 0) continue;
      const int64_t in_bucket = seg.shard_offset - dp->buckets()[seg.bucket].shard_base;
      dp->shard_grad(seg.bucket).slice(0, in_bucket, in_bucket + seg.length)
          .copy_(g.view({-1}).slice(0, seg.param_offset, seg.param_offset + seg.length));
    }
    optimizer->step(lr);
  }
  std::set<std::string> matrices() const {
    std::set<std::string> names;
    for (const auto& owner : dynamic_cast<DistributedOptimizer&>(*optimizer).owners()) names.insert(owner.name);
    return names;
  }
};

// State that does not depend on an eigenbasis: everything but SOAP's bases and the moments it
// keeps in them (only its factors GG_left/GG_right) and COSMOS's basis P with the S and V tied
// to it (only its momentum M). Eigenvectors are defined up to sign, and up to a rotation where
// eigenvalues nearly coincide, so one process's own bases move with fp32 noise too.
bool basis_free(const std::string& optimizer, const std::string& state, const std::set<std::string>& matrices) {
  const size_t dot = state.rfind('.');
  const std::string param = state.substr(0, dot), suffix = state.substr(dot);
  if (!matrices.count(param) || optimizer == "muon") return true;
  if (optimizer == "soap") return suffix == ".GG_left" || suffix == ".GG_right";
  return suffix == ".exp_avg";  // cosmos
}

struct Errors {
  double param = 0, state = 0, moved = 1e9;
  std::string worst_param, worst_state;
  size_t states_compared = 0;
};

// Params (this rank's shards) and the gathered state (those `compare_state` accepts) against
// the single-process run.
Errors compare(Distributed& d, Single& ref, const std::vector<Tensor>& initial, const std::string& label,
               double tolerance, const std::function<bool(const std::string&)>& compare_state) {
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
    if (it->second.shape() != t.shape() || !compare_state(name)) continue;
    const double err = max_rel_diff(it->second, t);
    EXPECT_LE(err, tolerance) << label << " state " << name;
    if (err >= e.state) e.state = err, e.worst_state = name;
    ++e.states_compared;
  }
  return e;
}

std::vector<Tensor> values(TransformerLM& m) {
  std::vector<Tensor> out;
  for (Param* p : m.params()) out.push_back(p->value.clone());
  return out;
}

void report(const std::string& label, const Errors& e) {
  if (is_root())
    std::printf("[%s] worst param %.1e (%s), worst state %.1e (%s; %zu compared), least moved %.1e\n", label.c_str(),
                e.param, e.worst_param.c_str(), e.state, e.worst_state.c_str(), e.states_compared, e.moved);
}

void expect_same_steps_from_the_same_gradients(const Opt& o) {
  for (const Model& mc : models_with_gpt2()) {
    for (const Layout& l : layouts()) {
      Single ref(mc.config, o.section);
      Distributed d(l, mc.config, o.section, *ref.model);
      const std::vector<Tensor> initial = values(*d.model);
      for (int s = 0; s < kSteps; ++s) {
        ref.step(s, o.lr, 0);
        d.step_with_gradients_of(*ref.model, o.lr);
      }
      const std::string label = o.name + " " + mc.name + " " + l.label() + ", single-process gradients";
      const Errors e = compare(d, ref, initial, label, kSameInputTolerance, [](const std::string&) { return true; });
      EXPECT_GE(e.moved, 100 * kTolerance) << label << ": some param barely moved";
      report(label, e);
    }
  }
}

// clip > 0: the gradients are clipped to that global norm (the dp-only layouts).
void expect_layouts_match_one_process(const Opt& o, double clip = 0) {
  for (const Model& mc : models()) {
    for (const Layout& l : layouts()) {
      if (clip > 0 && l.tp > 1) continue;
      Single ref(mc.config, o.section);
      Distributed d(l, mc.config, o.section, *ref.model);
      const std::vector<Tensor> initial = values(*d.model);
      for (int s = 0; s < kSteps; ++s) {
        const double norm = ref.step(s, o.lr, clip);
        if (clip > 0) EXPECT_GT(norm, 2 * clip) << "the clip must act";
        d.step(s, o.lr, clip);
      }
      const std::string label = o.name + " " + mc.name + " " + l.label() + (clip > 0 ? ", clipped" : "");
      const std::set<std::string> matrices = d.matrices();
      const Errors e = compare(d, ref, initial, label, kTolerance,
                               [&](const std::string& s) { return basis_free(o.name, s, matrices); });
      // The steps are visible at this tolerance: every param moved by far more than it.
      EXPECT_GE(e.moved, 10 * kTolerance) << label << ": some param barely moved";
      report(label, e);
    }
  }
}

}  // namespace

TEST(OptimizerExactness, AdamW) { expect_same_steps_from_the_same_gradients(defaults("adamw")); }
TEST(OptimizerExactness, Muon) { expect_same_steps_from_the_same_gradients(defaults("muon")); }
TEST(OptimizerExactness, Soap) { expect_same_steps_from_the_same_gradients(defaults("soap")); }
TEST(OptimizerExactness, Cosmos) { expect_same_steps_from_the_same_gradients(defaults("cosmos")); }

TEST(OptimizerLayouts, AdamW) { expect_layouts_match_one_process(well_conditioned("adamw")); }
TEST(OptimizerLayouts, Muon) { expect_layouts_match_one_process(well_conditioned("muon")); }
TEST(OptimizerLayouts, Soap) { expect_layouts_match_one_process(well_conditioned("soap")); }
TEST(OptimizerLayouts, Cosmos) { expect_layouts_match_one_process(well_conditioned("cosmos")); }

// Under ZeRO, DataParallel's clip scales each rank's shard of the gradients only; the matrix
// owners must step with the clipped gradient (they collect it from the shards). Muon's and
// COSMOS's steps are nearly scale-free, but their momenta are compared. (SOAP at eps 1e-2 would
// not move its matrices with gradients clipped to 0.05.)
TEST(OptimizerLayouts, MatrixOwnersStepWithTheClippedGradient) {
  for (const char* name : {"muon", "cosmos"}) expect_layouts_match_one_process(well_conditioned(name), 0.05);
}

// A checkpoint written by one process resumes in every layout: the single-process state after
// 3 steps goes through state() / load_state as load_checkpoint does, and 2 more steps (fed the
// single-process gradients, so every state tensor is compared exactly) match.
TEST(OptimizerLayouts, SingleProcessStateResumesInEveryLayout) {
  const Model& mc = models()[0];
  for (const char* name : kOptimizers) {
    const Opt o = defaults(name);
    for (const Layout& l : layouts()) {
      Single ref(mc.config, o.section);
      for (int s = 0; s < 3; ++s) ref.step(s, o.lr, 0);
      Distributed d(l, mc.config, o.section, *ref.model);  // from the params after 3 steps
      std::vector<NamedTensor> full = d.optimizer->state();
      const std::map<std::string, Tensor> saved = by_name(ref.optimizer->state());
      ASSERT_EQ(full.size(), saved.size());
      for (NamedTensor& t : full) t.tensor.copy_(saved.at(t.name));
      d.optimizer->load_state(full);
      d.optimizer->set_step_count(ref.optimizer->step_count());
      const std::vector<Tensor> initial = values(*d.model);
      for (int s = 3; s < 5; ++s) {
        ref.step(s, o.lr, 0);
        d.step_with_gradients_of(*ref.model, o.lr);
      }
      const std::string label = o.name + " resumed in " + l.label();
      report(label, compare(d, ref, initial, label, kSameInputTolerance, [](const std::string&) { return true; }));
    }
  }
}

// Per-rank state bytes: each rank's figure is its own state_bytes(); they sum to the single
// process's total (AdamW moments are packed without padding and each matrix's state is held
// once, by its owner; with tp, the tp-replicated AdamW params keep a copy per tp rank), and no
// rank holds all of it. COSMOS's owners hold mn + r(m+n) + r^2 numbers per m x n matrix, at its
// full logical shape, plus their ZeRO pieces of the AdamW moments.
TEST(OptimizerMemory, PerRankStateBytesSumToTheSingleProcessTotal) {
  const ModelConfig& c = models()[0].config;
  for (const char* name : kOptimizers) {
    const Opt o = defaults(name);
    for (const Layout& l : layouts()) {
      Single ref(c, o.section);
      Distributed d(l, c, o.section, *ref.model);
      const auto& dist = dynamic_cast<DistributedOptimizer&>(*d.optimizer);
      const std::vector<int64_t>& per_rank = dist.state_bytes_per_rank();
      ASSERT_EQ(per_rank.size(), static_cast<size_t>(l.dp * l.tp));
      const int me = d.grid.rank(Axis::DP) * l.tp + d.grid.rank(Axis::TP);
      EXPECT_EQ(per_rank[me], static_cast<int64_t>(d.optimizer->state_bytes()));
      const std::set<std::string> matrices = d.matrices();
      int64_t sum = 0, replicated_adamw = 0;
      for (int64_t b : per_rank) sum += b;
      for (Param* p : d.model->params())
        if (!p->shard.sharded() && !matrices.count(p->name)) replicated_adamw += 2 * p->value.nbytes();
      const int64_t single = static_cast<int64_t>(ref.optimizer->state_bytes());
      const std::string label = std::string(name) + " " + l.label();
      const int replicas = l.zero > 0 ? 1 : l.dp;  // without ZeRO every dp rank holds everything
      EXPECT_EQ(sum, replicas * (single + (l.tp - 1) * replicated_adamw)) << label;
      for (int64_t b : per_rank) EXPECT_LT(b, single) << label << ": the state is not split";
      if (o.name == "cosmos" && l.zero > 0) {
        std::vector<int64_t> matrix_bytes(per_rank.size(), 0);
        for (const auto& owner : dist.owners()) {
          const Shape s = logical_shape(ref.model->param(owner.name));
          const int64_t m = s[0], n = s[1], r = std::min<int64_t>(o.section.cosmos.rank, n);
          matrix_bytes[owner.dp_rank * l.tp + owner.tp_rank] += (m * n + r * (m + n) + r * r) * 4;
        }
        int64_t adamw = 0;  // two f32 moments per element of this rank's ZeRO pieces
        for (Param* p : d.model->params())
          if (!matrices.count(p->name)) adamw += 2 * 4 * d.dp->segment_of(p, d.grid.rank(Axis::DP)).length;
        EXPECT_EQ(per_rank[me], matrix_bytes[me] + adamw) << label;
      }
      const std::string log = describe_optimizer_groups(*d.optimizer);
      EXPECT_NE(log.find("optimizer state bytes per rank"), std::string::npos) << log;
      if (is_root()) {
        std::printf("[%s] state bytes per rank:", label.c_str());
        for (int64_t b : per_rank) std::printf(" %ld", long(b));
        std::printf(" (one process: %ld)\n", long(single));
      }
    }
  }
}

// The trainer's construction site and checkpoints: dp = the world size with ZeRO-2 and Muon
// (grad clipping on) follows the single-process run, the checkpoint records every rank's state
// bytes, and one process resumes it on the single-process trajectory.
TEST(OptimizerTrainer, MuonUnderZeroTwoTrainsSavesAndOneProcessResumes) {
  const int dp = world()->size();
  const std::string name = "optimizer_layouts_np" + std::to_string(dp);  // the np2 and np4 runs apart
  if (is_root()) anvil::testing::make_tiny_run(name);
  world()->barrier();
  const std::string dir = (fs::path(::testing::TempDir()) / ("anvil_" + name)).string();
  auto config = [&](const std::string& label, int degree, std::vector<std::string> extra) {
    // A job's ranks share their run directory; single-process runs (on every rank) have their own.
    const std::string out = dir + "/out_" + label + (degree > 1 ? "" : "_rank" + std::to_string(world()->rank()));
    // The tiny run's grad accumulation (2) and lr warm-up.
    std::vector<std::string> sets = anvil::testing::layout_run_settings(
        {degree, 1, 1, 1, degree > 1 ? 2 : 0}, out, 5, 8, 2, /*warmup_steps=*/std::nullopt);
    sets.insert(sets.end(), {"optimizer.name=muon", "optimizer.lr=0.02", "data.train=" + dir + "/gpl.h5",
                             "parallel.bucket_mb=0.05"});
    sets.insert(sets.end(), extra.begin(), extra.end());
    return load_run_config(dir + "/run.yaml", sets);
  };
  auto rel = [](double a, double b) { return std::fabs(a - b) / std::fabs(b); };
  Trainer straight(config("single", 1, {}), TrainerMode::Quiet);
  straight.train();
  const std::string shared = dir + "/ckpt";
  {
    Trainer t(config("dp", dp, {"checkpoint.dir=" + shared}), TrainerMode::Quiet, world());
    EXPECT_NE(dynamic_cast<DistributedOptimizer*>(&t.optimizer()), nullptr);
    t.train(3);
    for (size_t i = 0; i < 3; ++i)
      EXPECT_LT(rel(t.history()[i].loss, straight.history()[i].loss), 1e-5) << "dp step " << i + 1;
  }
  const CheckpointMeta meta = read_checkpoint_meta(shared + "/step_00000003");
  int64_t sum = 0;
  for (int k = 0; k < dp; ++k) {
    const auto it = meta.counters.find("optimizer.state_bytes.rank" + std::to_string(k));
    ASSERT_NE(it, meta.counters.end()) << "rank " << k;
    EXPECT_GT(it->second, 0);
    sum += it->second;
  }
  EXPECT_EQ(meta.counters.at("optimizer.state_bytes.total"), sum);
  EXPECT_EQ(sum, static_cast<int64_t>(straight.optimizer().state_bytes()));  // ZeRO-2 over dp only: no copies
  Trainer resumed(config("resume", 1, {"checkpoint.resume=" + shared + "/step_00000003"}), TrainerMode::Quiet);
  ASSERT_EQ(resumed.step(), 3);
  resumed.train();
  ASSERT_EQ(resumed.history().size(), 2u);
  for (size_t i = 0; i < 2; ++i)
    EXPECT_LT(rel(resumed.history()[i].loss, straight.history()[3 + i].loss), 1e-5) << "resumed step " << 4 + i;
  for (Param* p : resumed.model().params())
    EXPECT_LE(max_rel_diff(p->value, straight.model().param(p->name).value), kTolerance) << p->name;
}
