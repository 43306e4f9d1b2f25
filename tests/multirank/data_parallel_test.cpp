// The layout-equivalence invariant (DESIGN.md) for data parallelism, on real training
// of the tiny Llama run: dp = D with micro_batch_size B takes the same steps as one
// process with micro_batch_size D * B. Every rank also trains that single-process
// reference locally (no communicator). Also: ZeRO-1 state memory per rank, and
// checkpoints that reshard between dp4 + ZeRO-1 and one process. Runs at 4 ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "tests/support/layout_run.h"
#include "tests/support/mpi_world.h"
#include "tests/support/tiny_run.h"
#include "trainer/trainer.h"

using namespace anvil;
using anvil::testing::world;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kGlobalMicroBatch = 8;  // sequences per micro-batch over all dp ranks
constexpr int64_t kSteps = 10;

// The tiny run (made once by rank 0), plus a second store of the same text as
// prompt/response pairs whose prompts are masked out of the loss, so dp ranks hold
// different numbers of loss tokens and plain averaging of per-rank means would be wrong.
struct Fixture {
  anvil::testing::TinyRun run;
  std::string masked_store;
};

const Fixture& fixture() {
  static Fixture f = [] {
    Fixture fx;
    const std::string name = "dp_layouts";
    if (world()->rank() == 0) {
      fx.run = anvil::testing::make_tiny_run(name);
      const Tokenizer tok = Tokenizer::load(fx.run.tokenizer);
      std::ifstream in(fx.run.corpus);
      std::string line, para;
      std::vector<std::string> docs;
      while (std::getline(in, line)) {
        if (line.find_first_not_of(" \t") == std::string::npos) {
          if (!para.empty()) docs.push_back(para);
          para.clear();
        } else {
          para += para.empty() ? line : "\n" + line;
        }
      }
      const std::string jsonl = fx.run.dir + "/pairs.jsonl";
      std::ofstream out(jsonl);
      for (size_t i = 0; i < docs.size(); ++i) {
        const size_t cut = docs[i].size() * (i % 4) / 5;  // 0 to 60% of each document is prompt
        nlohmann::json j = {{"prompt", docs[i].substr(0, cut)}, {"response", docs[i].substr(cut)}};
        out << j.dump() << "\n";
      }
      out.close();
      PrepareOptions o;
      o.inputs = {jsonl};
      o.format = InputFormat::Jsonl;
      o.eos_id = *tok.token_to_id("<|endoftext|>");
      o.tokenizer_hash = tok.hash_hex();
      o.vocab_size = tok.vocab_size();
      o.output = fx.run.dir + "/pairs.h5";
      prepare_dataset(o, [&](const std::string& t) { return tok.encode(t); });
    }
    world()->barrier();
    const std::string dir = (fs::path(::testing::TempDir()) / ("anvil_" + name)).string();
    fx.run.dir = dir;
    fx.run.tokenizer = dir + "/tokenizer.json";
    fx.run.store = dir + "/gpl.h5";
    fx.run.config = dir + "/run.yaml";
    fx.masked_store = dir + "/pairs.h5";
    return fx;
  }();
  return f;
}

// A run of the tiny config under `label` (its own out_dir per rank and label).
// AdamW's eps is 1e-6 here, not 1e-8: on the first step Adam moves every element by
// lr * g / (|g| + eps), so a gradient that cancels to ~1e-10 (some MLP weights do) turns
// its fp32 reduction-order noise (~1e-11 absolute) into a parameter difference of
// ~1e-3 * lr. That is the optimizer's conditioning, not the layout; with eps = 1e-8 the
// same layouts give per-step losses within 4e-8 and parameters within 4e-5 (max|diff| /
// max|ref|), all of it from such elements. Gradient scale errors, which Adam's update
// would hide, are caught by the grad-norm comparison.
RunConfig config(const std::string& label, int dp, int zero, const std::string& store,
                 std::vector<std::string> extra = {}) {
  // A job's ranks share their run directory (heartbeats, checkpoints): group_of(dp) runs
  // world / dp jobs side by side, each its own; single-process runs (on every rank) too.
  const int rank = world()->rank();
  const std::string out = fixture().run.dir + "/out_" + label +
                          (dp > 1 ? "_group" + std::to_string(rank / dp) : "_rank" + std::to_string(rank));
  // The tiny run's grad accumulation (2) and lr warm-up.
  std::vector<std::string> sets = anvil::testing::layout_run_settings(
      {dp, 1, 1, 1, zero}, out, kSteps, kGlobalMicroBatch, 2, /*warmup_steps=*/std::nullopt);
  sets.insert(sets.end(), {"optimizer.eps=1e-6", "data.train=" + store});
  sets.insert(sets.end(), extra.begin(), extra.end());
  return load_run_config(fixture().run.config, sets);
}

// The communicator of a dp group: consecutive blocks of `dp` world ranks (all train the same).
std::shared_ptr<Communicator> group_of(int dp) {
  auto w = world();
  return std::shared_ptr<Communicator>(w->split(w->rank() / dp, w->rank()));
}

double rel(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-30); }

// max |a - b| / max |b| over one tensor.
double tensor_error(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector(), y = b.to_vector();
  double diff = 0, scale = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    diff = std::max(diff, std::fabs(double(x[i]) - y[i]));
    scale = std::max(scale, std::fabs(double(y[i])));
  }
  return diff / std::max(scale, 1e-30);
}

// A dp layout and its gradient bucket size.
struct DpCase {
  int dp;
  int zero;
  double bucket_mb;  // small buckets: several per step, padded, started during backward
};

// The single-process reference on this rank, cached per store.
Trainer& reference(const std::string& store) {
  static std::map<std::string, std::unique_ptr<Trainer>> cache;
  auto& t = cache[store];
  if (!t) {
    t = std::make_unique<Trainer>(config("ref" + std::to_string(cache.size()), 1, 0, store), TrainerMode::Quiet);
    t->train();
  }
  return *t;
}

void expect_same_trajectory(const std::string& store, const DpCase& l) {
  Trainer& ref = reference(store);
  const std::string label = "dp" + std::to_string(l.dp) + "z" + std::to_string(l.zero) +
                            (store == fixture().masked_store ? "_masked" : "_plain");
  Trainer t(config(label, l.dp, l.zero, store, {"parallel.bucket_mb=" + std::to_string(l.bucket_mb)}),
            TrainerMode::Quiet, group_of(l.dp));
  ASSERT_NE(t.data_parallel(), nullptr);
  EXPECT_GT(t.data_parallel()->buckets().size(), l.bucket_mb < 1 ? 1u : 0u);
  t.train();
  // The model's grad-ready hook started every bucket during backward, none at the end.
  EXPECT_EQ(t.data_parallel()->buckets_started_in_backward(), static_cast<int>(t.data_parallel()->buckets().size()));
  ASSERT_EQ(t.history().size(), ref.history().size());
  double worst_loss = 0, worst_param = 0;
  for (size_t i = 0; i < t.history().size(); ++i) {
    const double e = rel(t.history()[i].loss, ref.history()[i].loss);
    worst_loss = std::max(worst_loss, e);
    EXPECT_LT(e, 1e-5) << label << " step " << i + 1 << ": " << t.history()[i].loss << " vs "
                       << ref.history()[i].loss;
    EXPECT_LT(rel(t.history()[i].grad_norm, ref.history()[i].grad_norm), 1e-4) << label << " step " << i + 1;
  }
  TransformerLM& mine = t.model();
  TransformerLM& theirs = ref.model();
  for (Param* p : mine.params()) {
    const double e = tensor_error(p->value, theirs.param(p->name).value);
    worst_param = std::max(worst_param, e);
    EXPECT_LT(e, 1e-5) << label << " " << p->name;
  }
  if (world()->rank() == 0)
    std::printf("[%s, %s] max per-step loss deviation %.2e, max param deviation %.2e\n", label.c_str(),
                store == fixture().masked_store ? "masked" : "plain", worst_loss, worst_param);
}

}  // namespace

TEST(DataParallelLayouts, MaskedDataGivesRanksDifferentTokenCounts) {
  // Guard for the test below: without unequal counts it could not tell the weightings apart.
  auto store = std::make_shared<const TokenStore>(TokenStore::open(fixture().masked_store));
  const RunConfig c = config("probe", 4, 0, fixture().masked_store);
  LoaderConfig lc;
  lc.seq_len = c.data.seq_len;
  lc.batch_size = 2;
  lc.seed = c.run.seed;
  lc.valid_fraction = c.data.valid_fraction;
  lc.rank = world()->rank();
  lc.world = 4;
  Loader loader(store, lc, Split::Train);
  int64_t differing_batches = 0;
  for (int b = 0; b < 20; ++b) {
    const Batch batch = loader.next();
    int64_t n = 0;
    for (int64_t i = 0; i < batch.targets.numel(); ++i) n += batch.targets.data<int32_t>()[i] != -100;
    Tensor counts = Tensor::full({4}, 0.0, DType::I64);
    counts.data<int64_t>()[world()->rank()] = n;
    world()->all_reduce(counts, ReduceOp::Sum);
    const int64_t* k = counts.data<int64_t>();
    differing_batches += !(k[0] == k[1] && k[1] == k[2] && k[2] == k[3]);
  }
  EXPECT_GE(differing_batches, 10);
}

TEST(DataParallelLayouts, EveryLayoutFollowsTheSingleProcessTrajectory) {
  ASSERT_EQ(world()->size(), 4) << "run under mpirun -np 4";
  const std::vector<DpCase> layouts = {{2, 0, 0.02}, {4, 1, 0.02}, {2, 2, 0.02}, {4, 2, 25.0}, {4, 0, 25.0}};
  for (const std::string& store : {fixture().run.store, fixture().masked_store})
    for (const DpCase& l : layouts) expect_same_trajectory(store, l);
  // It trained: the loss fell.
  Trainer& ref = reference(fixture().run.store);
  EXPECT_LT(ref.history().back().loss, ref.history().front().loss - 0.2);
}

TEST(DataParallelMemory, ZeroOneKeepsAQuarterOfTheStateAtDp4) {
  ASSERT_EQ(world()->size(), 4);
  Trainer single(config("mem1", 1, 0, fixture().run.store), TrainerMode::Quiet);
  Trainer plain(config("mem4z0", 4, 0, fixture().run.store), TrainerMode::Quiet, world());
  Trainer sharded(config("mem4z1", 4, 1, fixture().run.store), TrainerMode::Quiet, world());
  const double full = static_cast<double>(single.optimizer().state_bytes());
  EXPECT_EQ(static_cast<double>(plain.optimizer().state_bytes()), full);  // plain dp replicates it
  const double mine = static_cast<double>(sharded.optimizer().state_bytes());
  EXPECT_LT(std::fabs(mine - full / 4) / (full / 4), 0.05) << mine << " bytes vs a quarter of " << full;
}

TEST(DataParallelCheckpoints, ReshardBetweenDp4ZeroOneAndOneProcess) {
  ASSERT_EQ(world()->size(), 4);
  const std::string& store = fixture().run.store;
  Trainer& straight = reference(store);  // 10 uninterrupted single-process steps
  const std::string shared = fixture().run.dir + "/reshard";
  const std::vector<std::string> into_shared = {"checkpoint.dir=" + shared, "checkpoint.resume=none"};
  // dp4 + ZeRO-1 trains 5 steps and saves (rank 0 writes full-shape tensors).
  {
    Trainer first(config("save_dp4", 4, 1, store, into_shared), TrainerMode::Quiet, world());
    first.train(5);
  }
  const std::string dp4_ckpt = shared + "/step_00000005";
  // One process resumes it (on every rank, each into its own directory).
  {
    Trainer second(config("resume_single", 1, 0, store, {"checkpoint.resume=" + dp4_ckpt}), TrainerMode::Quiet);
    EXPECT_EQ(second.step(), 5);
    second.train(7);
    ASSERT_EQ(second.history().size(), 2u);
    for (size_t i = 0; i < 2; ++i)
      EXPECT_LT(rel(second.history()[i].loss, straight.history()[5 + i].loss), 1e-6)
          << "dp4+ZeRO-1 -> 1 process, step " << 6 + i << ": " << second.history()[i].loss << " vs "
          << straight.history()[5 + i].loss;
  }
  // The reverse: one process (rank 0) saves, dp4 + ZeRO-1 resumes.
  const std::string single_dir = fixture().run.dir + "/reshard_single";
  if (world()->rank() == 0) {
    Trainer first(config("save_single", 1, 0, store, {"checkpoint.dir=" + single_dir, "checkpoint.resume=none"}),
                  TrainerMode::Quiet);
    first.train(5);
  }
  world()->barrier();
  {
    Trainer second(config("resume_dp4", 4, 1, store, {"checkpoint.resume=" + single_dir + "/step_00000005"}),
                   TrainerMode::Quiet, world());
    EXPECT_EQ(second.step(), 5);
    second.train(7);
    ASSERT_EQ(second.history().size(), 2u);
    for (size_t i = 0; i < 2; ++i)
      EXPECT_LT(rel(second.history()[i].loss, straight.history()[5 + i].loss), 1e-6)
          << "1 process -> dp4+ZeRO-1, step " << 6 + i << ": " << second.history()[i].loss << " vs "
          << straight.history()[5 + i].loss;
  }
}
