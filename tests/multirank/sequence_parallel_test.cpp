// Ulysses sequence parallelism in TransformerLM against the single-process model (DESIGN.md's
// layout invariant): every rank builds the unsplit model from the same seed as the reference,
// and the sp model (its shards copied from the reference) runs on this rank's slice of each
// sequence. Layouts: sp = world; at 4 ranks also sp2 x tp2 and dp2 x sp2 (the trainer's recipe:
// token counts and gradients summed over ProcessGrid::data_sequence_comm()). For a Llama with
// GQA (8 query / 4 KV heads, untied with biases, and tied) and a GPT-2 (learned positions), at a
// T that divides sp and one that does not: the loss, every gradient summed over sp, and the
// params after three AdamW steps match. Also ignored targets weighed over the whole group, a
// rank holding no tokens, mis-sliced batches, the head-count limit, decoding's refusal, memory,
// explicit position ids (sliced like the tokens) and the refusal of packed documents.
// Runs at 2 and 4 ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <memory>

#include "models/transformer.h"
#include "optim/adamw.h"
#include "parallel/data_parallel.h"
#include "models/layout_checks.h"
#include "parallel/grid.h"
#include "parallel/sequence_partition.h"
#include "tests/support/adam_drift.h"
#include "tests/support/mpi_world.h"
#include "tests/support/reference.h"
#include "tests/support/small_models.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing::AdamDrift;
using anvil::testing::is_root;
using anvil::testing::max_abs;
using anvil::testing::max_abs_diff;
using anvil::testing::max_rel_diff;
using anvil::testing::random_ids;
using anvil::testing::small_gpt2;
using anvil::testing::small_llama;
using anvil::testing::small_mistral;
using anvil::testing::world;

namespace {

constexpr uint64_t kSeed = 4321;
constexpr int64_t kB = 2;  // sequences per dp rank
constexpr int kIgnore = -100;

using Case = anvil::testing::ModelCase;
// Plus Mistral with a sliding window shorter than the test sequences, so every sp slice
// attends across a window edge that falls inside another rank's positions.
std::vector<Case> cases() {
  return {{"llama_gqa_untied", small_llama(false)},
          {"llama_gqa_tied", small_llama(true)},
          {"gpt2", small_gpt2()},
          {"mistral_window5", small_mistral(/*window=*/5)}};
}

// The layouts this world size runs: sp = world, and at 4 ranks sp2 x tp2 and dp2 x sp2.
std::vector<GridDims> layouts() {
  const int W = world()->size();
  std::vector<GridDims> out{GridDims{1, 1, 1, W}};
  if (W == 4) {
    out.push_back(GridDims{1, 2, 1, 2});
    out.push_back(GridDims{2, 1, 1, 2});
  }
  return out;
}

// Sequence lengths: one that divides sp and one that does not (18 over 4: slices 5, 5, 4, 4).
std::vector<int64_t> lengths(int sp) { return {8 * sp, sp == 4 ? 18 : 8 * sp + 1}; }

std::string describe(const GridDims& d, int64_t T) { return d.str() + " T=" + std::to_string(T); }

// One layout's grid, the reference model and the split model with the same weights.
struct Models {
  std::unique_ptr<ProcessGrid> grid;
  std::unique_ptr<TransformerLM> ref, split;
  Communicator& sp() const { return grid->comm(Axis::SP); }
  Communicator& dp_sp() const { return grid->data_sequence_comm(); }
};
Models build(const ModelConfig& c, const GridDims& dims) {
  Models s;
  s.grid = std::make_unique<ProcessGrid>(world(), dims);
  s.ref = std::make_unique<TransformerLM>(c);
  s.ref->init_weights(kSeed);
  anvil::testing::randomize_params(s.ref->params());
  ModelLayout layout;
  layout.tp = dims.tp > 1 ? &s.grid->comm(Axis::TP) : nullptr;
  layout.sp = &s.grid->comm(Axis::SP);
  s.split = std::make_unique<TransformerLM>(c, layout);
  for (Param* p : s.split->params()) p->value.copy_(take_shard(*p, s.ref->param(p->name).value));
  return s;
}

// The global batch [dp * kB, T]; ignored targets fill the first third of sequence 0 (mostly the
// first sp rank's slice) and every 7th position, so the ranks' token counts differ a lot.
struct Batch {
  Tensor ids, targets;
};
Batch global_batch(const ModelConfig& c, int dp, int64_t T, uint32_t stream) {
  Batch b{random_ids({dp * kB, T}, static_cast<int32_t>(c.vocab_size), stream),
          random_ids({dp * kB, T}, static_cast<int32_t>(c.vocab_size), stream + 1)};
  int32_t* t = b.targets.data<int32_t>();
  for (int64_t i = 0; i < T / 3; ++i) t[i] = kIgnore;
  for (int64_t i = 0; i < b.targets.numel(); i += 7) t[i] = kIgnore;
  return b;
}

// This rank's part: its dp rank's sequences, then its sp slice of each.
Batch my_slice(const Batch& global, const ProcessGrid& g) {
  const int64_t b0 = g.rank(Axis::DP) * kB;
  return {sequence_slice(global.ids.slice(0, b0, b0 + kB), g.comm(Axis::SP)),
          sequence_slice(global.targets.slice(0, b0, b0 + kB), g.comm(Axis::SP))};
}

int64_t count_tokens(const Tensor& targets) {
  int64_t n = 0;
  for (int64_t i = 0; i < targets.numel(); ++i) n += targets.data<int32_t>()[i] != kIgnore;
  return n;
}

// One micro-batch the way the trainer runs it: the loss is normalised by the token count over
// dp x sp and the gradients are summed over dp x sp. With dp = 1 the model's own default (the
// sp group's count) is used instead, which must be the same thing. Returns the global loss.
double step_forward_backward(Models& s, const Batch& global) {
  const Batch mine = my_slice(global, *s.grid);
  Cache c;
  const float loss = s.split->forward_loss(mine.ids, mine.targets, c, kIgnore);
  double global_loss = loss;
  if (s.grid->size(Axis::DP) > 1) {
    const int64_t local = count_tokens(mine.targets);
    const int64_t tokens = all_reduce_sum(s.dp_sp(), local);
    global_loss = all_reduce_sum(s.dp_sp(), static_cast<double>(loss) * local / tokens);
    s.split->backward_loss(c, 1.0f, tokens);
  } else {
    s.split->backward_loss(c);
  }
  for (Param* p : s.split->params()) s.dp_sp().all_reduce(p->grad);
  return global_loss;
}

double reference_step(TransformerLM& ref, const Batch& global) {
  Cache c;
  const float loss = ref.forward_loss(global.ids, global.targets, c, kIgnore);
  ref.backward_loss(c);
  return loss;
}

double rel(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-30); }

// As in tensor_parallel_test.cpp, lr 1e-4: summation-order noise in the updates scales with lr.
// And eps = lr rather than 1e-8: Adam's update lr * m / (sqrt(v) + eps) has slope lr / eps in the
// gradient where the gradient is near 0, so with eps 1e-8 fp32 rounding noise is amplified 1e4x
// there. Measured at dp2 x sp2 (tied Llama, T = 16): an up_proj element with gradient 1.01e-8 (one
// process) vs 1.23e-8 (four ranks' partial sums; 4e-8 of the tensor's largest gradient) stepped
// 0.50 vs 0.55 lr, ending 2.0e-5 of the tensor's max apart (eps 1e-6 still gave 1.1e-5 on an
// embedding). With eps >= lr every update is at most as far apart as the gradients, which the
// test above checks at 1e-5; params with real gradients still move by ~lr, far above 1e-5.
// The params are compared within AdamDrift's bound (tests/support/adam_drift.h), derived from
// the gradient differences measured before each step, and that bound below a tenth of the moves.
constexpr double kLr = 1e-4, kAdamEps = kLr;

}  // namespace

TEST(SequenceParallelModel, LossAndGradientsMatchOneProcess) {
  for (const GridDims& dims : layouts())
    for (const int64_t T : lengths(dims.sp))
      for (const Case& k : cases()) {
        SCOPED_TRACE(std::string(k.name) + " " + describe(dims, T));
        Models s = build(k.config, dims);
        const Batch b = global_batch(k.config, dims.dp, T, 31);
        const double ref_loss = reference_step(*s.ref, b);
        const double loss = step_forward_backward(s, b);
        EXPECT_LE(rel(loss, ref_loss), 1e-5) << loss << " vs " << ref_loss;
        double worst = 0;
        std::string worst_name;
        for (Param* p : s.split->params()) {
          const double e = max_rel_diff(p->grad, take_shard(*p, s.ref->param(p->name).grad));
          EXPECT_LE(e, 1e-5) << "gradient of " << p->name;
          if (e >= worst) worst = e, worst_name = p->name;
        }
        if (is_root())
          std::printf("[%s %s] loss rel err %.2e, worst gradient %.2e (%s)\n", describe(dims, T).c_str(), k.name,
                      rel(loss, ref_loss), worst, worst_name.c_str());
      }
}

TEST(SequenceParallelModel, AdamWStepsMatchOneProcess) {
  AdamWConfig ac;
  ac.weight_decay = 0.1;
  ac.eps = kAdamEps;
  for (const GridDims& dims : layouts())
    for (const int64_t T : lengths(dims.sp))
      for (const Case& k : cases()) {
        SCOPED_TRACE(std::string(k.name) + " " + describe(dims, T));
        Models s = build(k.config, dims);
        std::vector<Tensor> initial;
        for (Param* p : s.split->params()) initial.push_back(p->value.clone());
        AdamW ref_opt(s.ref->params(), ac), opt(s.split->params(), ac);
        const std::vector<Param*> params = s.split->params();
        std::vector<AdamDrift> drift(params.size(), AdamDrift(ac.beta1, ac.beta2, ac.eps));
        double worst_loss = 0;
        for (int step = 0; step < 3; ++step) {
          const Batch b = global_batch(k.config, dims.dp, T, 40 + 2 * step);
          s.ref->zero_grad();
          s.split->zero_grad();
          const double ref_loss = reference_step(*s.ref, b);
          const double loss = step_forward_backward(s, b);
          EXPECT_LE(rel(loss, ref_loss), 1e-5) << "step " << step + 1;
          worst_loss = std::max(worst_loss, rel(loss, ref_loss));
          for (size_t i = 0; i < params.size(); ++i) {
            const Tensor ref_grad = take_shard(*params[i], s.ref->param(params[i]->name).grad);
            EXPECT_LE(max_rel_diff(params[i]->grad, ref_grad), 1e-5) << "gradient of " << params[i]->name
                                                                     << " at step " << step + 1;
            drift[i].step(kLr, max_abs_diff(params[i]->grad, ref_grad), max_abs(params[i]->value));
          }
          ref_opt.step(kLr);
          opt.step(kLr);
        }
        double worst = 0;
        std::string worst_name;
        for (size_t i = 0; i < params.size(); ++i) {
          const Param* p = params[i];
          const double e = max_abs_diff(p->value, take_shard(*p, s.ref->param(p->name).value));
          const double moved = max_abs_diff(p->value, initial[i]);
          EXPECT_LE(e, drift[i].bound()) << p->name << " after 3 steps";
          if (e / drift[i].bound() >= worst) worst = e / drift[i].bound(), worst_name = p->name;
          EXPECT_GE(max_rel_diff(p->value, initial[i]), 1e-4) << p->name << " did not move";
          EXPECT_LE(drift[i].bound(), 0.1 * moved) << p->name << ": the tolerance hides the steps";
        }
        if (is_root())
          std::printf("[%s %s] 3 AdamW steps: worst loss rel err %.2e, worst param %.2f of its bound (%s)\n",
                      describe(dims, T).c_str(), k.name, worst_loss, worst, worst_name.c_str());
      }
}

// Every sp rank returns the group's mean, not its own slice's: with the first slice entirely
// ignored, a per-rank mean would differ by rank (and rank 0 would have no tokens at all).
TEST(SequenceParallelModel, IgnoredTargetsAreWeighedOverTheWholeGroup) {
  const int W = world()->size();
  const GridDims dims{1, 1, 1, W};
  const ModelConfig c = small_llama(false);
  Models s = build(c, dims);
  const int64_t T = 4 * W + 1;
  Batch b = global_batch(c, 1, T, 51);
  const SequencePartition part = partition_sequence(T, W);
  for (int64_t i = 0; i < kB; ++i)
    for (int64_t t = 0; t < part.length(0); ++t) b.targets.data<int32_t>()[i * T + t] = kIgnore;
  const Batch mine = my_slice(b, *s.grid);
  if (s.sp().rank() == 0) EXPECT_EQ(count_tokens(mine.targets), 0);
  const double ref_loss = reference_step(*s.ref, b);
  const double loss = step_forward_backward(s, b);
  EXPECT_LE(rel(loss, ref_loss), 1e-5) << loss << " vs " << ref_loss;
  // The same value on every rank.
  EXPECT_LE(rel(all_reduce_sum(s.sp(), loss), W * ref_loss), 1e-5);
  for (Param* p : s.split->params())
    EXPECT_LE(max_rel_diff(p->grad, s.ref->param(p->name).grad), 1e-5) << p->name;
}

// T < sp leaves the last ranks with no tokens; they still take part in every exchange.
TEST(SequenceParallelModel, ShortSequencesLeaveRanksEmpty) {
  const int W = world()->size();
  const GridDims dims{1, 1, 1, W};
  for (const Case& k : cases()) {
    SCOPED_TRACE(k.name);
    Models s = build(k.config, dims);
    const int64_t T = W - 1;  // rank W-1 holds nothing
    const Batch b = global_batch(k.config, 1, T, 61);
    EXPECT_EQ(my_slice(b, *s.grid).ids.size(1), partition_sequence(T, W).length(s.sp().rank()));
    const double ref_loss = reference_step(*s.ref, b);
    const double loss = step_forward_backward(s, b);
    EXPECT_LE(rel(loss, ref_loss), 1e-5) << loss << " vs " << ref_loss;
    for (Param* p : s.split->params())
      EXPECT_LE(max_rel_diff(p->grad, take_shard(*p, s.ref->param(p->name).grad)), 1e-5) << p->name;
  }
}

// Slices off the balanced split are refused on every sp rank alike, before any exchange that
// could hang. (Equal lengths are always a balanced split: unsliced batches on every rank look
// like one sequence sp times as long, which max_position_embeddings usually catches.)
TEST(SequenceParallelModel, MisSlicedBatchesAreRefusedOnEveryRank) {
  const int W = world()->size(), r = world()->rank();
  Models s = build(small_llama(true), GridDims{1, 1, 1, W});
  const Batch b = global_batch(s.ref->config(), 1, 16 + r, 71);  // lengths 16, 17, ..: too few on rank 0
  const int64_t T = 16 * W + W * (W - 1) / 2;
  Cache c;
  const std::string msg = error_of([&] { s.split->forward_loss(b.ids, b.targets, c); });
  EXPECT_NE(msg.find("sp rank 0 passed 16 positions"), std::string::npos) << msg;
  EXPECT_NE(msg.find("T = " + std::to_string(T)), std::string::npos) << msg;
  EXPECT_NE(msg.find("gives it " + std::to_string(partition_sequence(T, W).length(0))), std::string::npos) << msg;
  EXPECT_NE(msg.find("sequence_slice"), std::string::npos) << msg;
  // The global length counts against max_position_embeddings, not the slice's.
  const Batch long_batch = global_batch(s.ref->config(), 1, 33, 72);
  const Batch mine = my_slice(long_batch, *s.grid);
  EXPECT_NE(error_of([&] { s.split->forward_loss(mine.ids, mine.targets, c); })
                .find("sequence length 33 exceeds max_position_embeddings = 32"),
            std::string::npos);
}

// Ulysses splits heads: sp beyond the KV heads of a tp rank is refused at construction with
// validate_layout's message, which states the limit and the degrees that work.
TEST(SequenceParallelModel, SpBeyondTheKvHeadsIsRefusedWithTheLimit) {
  const int W = world()->size();
  ModelConfig c = small_llama(true);
  c.num_key_value_heads = W / 2;  // sp = W exceeds them
  GridDims dims;
  dims.sp = W;
  const std::string expected = error_of([&] { validate_layout(dims, c); });
  EXPECT_NE(expected.find("parallel.sp = " + std::to_string(W) + " exceeds"), std::string::npos) << expected;
  EXPECT_NE(expected.find("num_key_value_heads / tp = " + std::to_string(W / 2)), std::string::npos) << expected;
  EXPECT_NE(expected.find(W == 2 ? "Use sp in {1}" : "Use sp in {1, 2}"), std::string::npos) << expected;
  EXPECT_EQ(error_of([&] { TransformerLM m(c, ModelLayout{nullptr, world().get()}); }), expected);
  EXPECT_EQ(error_of([&] { TransformerLM m(c); }), "(no error)");
}

TEST(SequenceParallelModel, KvCachedDecodingRefusesSequenceParallelism) {
  TransformerLM m(small_llama(true), ModelLayout{nullptr, world().get()});
  KVCache kv(m.config(), 1, 8);
  EXPECT_NE(error_of([&] { m.forward_cached(Tensor::zeros({1, 2}, DType::I32), kv); }).find("not sequence-parallel"),
            std::string::npos);
}

// The size table's per-rank activations against the measured peak of one sp step.
TEST(SequenceParallelModel, MemoryTableMatchesTheMeasuredPeak) {
  const int W = world()->size();
  for (const Case& k : cases()) {
    SCOPED_TRACE(k.name);
    ModelConfig c = k.config;
    c.max_position_embeddings = 256;
    TransformerLM m(c, ModelLayout{nullptr, world().get()});
    m.init_weights(kSeed);
    const int64_t T = 48 * W + 1;
    const Batch b = global_batch(c, 1, T, 81);
    const Batch mine{sequence_slice(b.ids, *world()), sequence_slice(b.targets, *world())};
    const MemoryTable table = m.memory_table(kB, T);
    Allocator& alloc = cpu_allocator();
    const size_t before = alloc.stats().current_bytes;
    alloc.reset_peak();
    {
      Cache cache;
      m.forward_loss(mine.ids, mine.targets, cache);
      m.backward_loss(cache);
    }
    const double measured = static_cast<double>(alloc.stats().peak_bytes - before);
    const double predicted = static_cast<double>(table.activation_bytes + table.workspace_bytes);
    EXPECT_NEAR(measured, predicted, 0.10 * predicted);
    TransformerLM one(c);
    EXPECT_LT(table.activation_bytes, one.memory_table(kB, T).activation_bytes);
    if (is_root())
      std::printf("[sp=%d %s T=%ld] step memory: predicted %.2f MB, measured %.2f MB (one process: %.2f MB)\n", W,
                  k.name, long(T), predicted / 1e6, measured / 1e6, one.memory_table(kB, T).activation_bytes / 1e6);
  }
}

// Explicit position ids under sp: each rank passes its slice of the [B, T] ids (its tokens'
// global positions, gaps and repeats included); loss and gradients match one process given the
// whole ids. Packed documents are refused on every rank alike (Ulysses attends in the head
// layout, which carries no document boundaries yet).
TEST(SequenceParallelModel, PositionIdsMatchOneProcessAndPackedDocumentsAreRefused) {
  const GridDims dims{1, 1, 1, world()->size()};
  const int64_t T = lengths(dims.sp)[1];
  for (const Case& k : cases()) {
    SCOPED_TRACE(std::string(k.name) + " " + describe(dims, T));
    Models s = build(k.config, dims);
    const Batch b = global_batch(k.config, 1, T, 41);
    Tensor pos = Tensor::empty({kB, T}, DType::I32);
    for (int64_t i = 0; i < kB * T; ++i) pos.data<int32_t>()[i] = static_cast<int32_t>((5 * (i % T) + i / T) % T);
    auto ref_ctx = std::make_shared<StepContext>();
    ref_ctx->position_ids = pos;
    Cache rc;
    rc.set_context(ref_ctx);
    const double ref_loss = s.ref->forward_loss(b.ids, b.targets, rc, kIgnore);
    s.ref->backward_loss(rc);

    auto ctx = std::make_shared<StepContext>();
    ctx->position_ids = sequence_slice(pos, s.sp()).contiguous();
    const Batch mine = my_slice(b, *s.grid);
    Cache c;
    c.set_context(ctx);
    const double loss = s.split->forward_loss(mine.ids, mine.targets, c, kIgnore);
    s.split->backward_loss(c);
    for (Param* p : s.split->params()) s.dp_sp().all_reduce(p->grad);
    EXPECT_LE(rel(loss, ref_loss), 1e-5) << loss << " vs " << ref_loss;
    for (Param* p : s.split->params())
      EXPECT_LE(max_rel_diff(p->grad, take_shard(*p, s.ref->param(p->name).grad)), 1e-5) << "gradient of " << p->name;

    auto packed = std::make_shared<StepContext>();
    packed->mask.segment_ids = Tensor::zeros(mine.ids.shape(), DType::I32);
    Cache pc;
    pc.set_context(packed);
    const std::string e = error_of([&] { s.split->forward_loss(mine.ids, mine.targets, pc, kIgnore); });
    EXPECT_NE(e.find("packed documents"), std::string::npos) << e;
  }
}
