// kernels/embedding and kernels/loss on CUDA against the CPU backend on the same inputs:
// lookup and scatter-add (whole table and vocab-parallel shard), fused cross-entropy forward
// and backward (whole rows and the shard halves), in f32 and bf16, with ignored rows, repeated
// ids and out-of-range ids. Error measure and base tolerances: tests/support/gpu_check.h.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/loss.h"
#include "tests/support/gpu_check.h"
#include "tests/support/kernel_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

constexpr DType F32 = DType::F32, BF16 = DType::BF16;
constexpr int kIgnore = -100;

Tensor ids_from(const std::vector<int32_t>& v) { return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}); }

// N ids in [0, V), every fifth one repeated from the previous so the scatter-add sums rows.
Tensor repeated_ids(int64_t N, int32_t V, uint32_t stream) {
  Tensor ids = random_ids({N}, V, stream);
  int32_t* p = ids.data<int32_t>();
  for (int64_t i = 1; i < N; i += 5) p[i] = p[i - 1];
  return ids;
}

class EmbeddingGpu : public ::testing::TestWithParam<DType> {};

TEST_P(EmbeddingGpu, LookupAndScatterAddMatchCpu) {
  const DType dt = GetParam();
  const int64_t V = 517, C = 96, N = 300;
  const Tensor ids = repeated_ids(N, V, 81);
  const Tensor table = reference_input(random_tensor({V, C}, 82), dt);
  Tensor out = Tensor::empty({N, C});
  kernels::embedding_forward(ids, table, out);
  const Tensor idsg = on_gpu(ids);
  Tensor outg = Tensor::empty({N, C}, dt, gpu());
  kernels::embedding_forward(idsg, gpu_operand(table, dt), outg);
  // A lookup copies rows: exact in any dtype.
  EXPECT_EQ(gpu_error(outg, out), 0.0) << "embedding lookup is a copy";

  // Backward: f32 table gradient accumulated onto a non-zero start; repeated ids sum rows.
  const Tensor dout = reference_input(random_tensor({N, C}, 83), dt);
  const Tensor dtable0 = random_tensor({V, C}, 84);
  Tensor dtable = dtable0.clone();
  kernels::embedding_backward(ids, dout, dtable);
  Tensor dtableg = on_gpu(dtable0);
  const Tensor doutg = gpu_operand(dout, dt);
  kernels::embedding_backward(idsg, doutg, dtableg);
  EXPECT_GPU_NEAR(dtableg, dtable, kF32Tol, "dtable (accumulated)");

  // Deterministic (the header promises no atomics): a second run from the same start is bitwise equal.
  Tensor again = on_gpu(dtable0);
  kernels::embedding_backward(idsg, doutg, again);
  EXPECT_TRUE(bitwise_equal(dtableg.to(Device::cpu()), again.to(Device::cpu())))
      << "embedding_backward differs run to run";
}

TEST_P(EmbeddingGpu, ShardLookupAndScatterAddMatchCpu) {
  const DType dt = GetParam();
  const int64_t V = 400, start = 128, Vs = 100, C = 64, N = 250;
  const Tensor ids = repeated_ids(N, static_cast<int32_t>(V), 85);  // most fall outside the shard
  const Tensor shard = reference_input(random_tensor({Vs, C}, 86), dt);
  Tensor out = Tensor::empty({N, C});
  kernels::embedding_shard_forward(ids, shard, start, out);
  const Tensor idsg = on_gpu(ids);
  Tensor outg = Tensor::empty({N, C}, dt, gpu());
  outg.fill_(7.0);  // rows outside the shard must be written as zeros, not left alone
  kernels::embedding_shard_forward(idsg, gpu_operand(shard, dt), start, outg);
  EXPECT_EQ(gpu_error(outg, out), 0.0) << "shard lookup is a copy (zeros outside the shard)";

  const Tensor dout = reference_input(random_tensor({N, C}, 87), dt);
  const Tensor d0 = random_tensor({Vs, C}, 88);
  Tensor d = d0.clone();
  kernels::embedding_shard_backward(ids, dout, start, d);
  Tensor dg = on_gpu(d0);
  kernels::embedding_shard_backward(idsg, gpu_operand(dout, dt), start, dg);
  EXPECT_GPU_NEAR(dg, d, kF32Tol, "dtable_shard (accumulated)");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, EmbeddingGpu, ::testing::Values(F32, BF16),
                         [](const ::testing::TestParamInfo<DType>& i) { return std::string(dtype_label(i.param)); });

// An id outside the table is bad input: an anvil::Error naming it, not a fault or garbage rows.
TEST(EmbeddingGpuErrors, OutOfRangeIdThrowsNamingIt) {
  const Tensor table = on_gpu(random_tensor({50, 8}, 89));
  Tensor out = Tensor::empty({4, 8}, F32, gpu());
  const Tensor ids = on_gpu(ids_from({1, 2, 50, 3}));
  // "50" alone would also match V = 50 in the message: ask for the id and its position.
  expect_error_containing([&] { kernels::embedding_forward(ids, table, out); }, {"id 50 at position 2"});
  Tensor dtable = Tensor::zeros({50, 8}, F32, gpu());
  expect_error_containing([&] { kernels::embedding_backward(ids, out, dtable); }, {"id 50 at position 2"});
  EXPECT_EQ(kernels::max_abs(dtable), 0.0) << "a rejected backward must not touch dtable";
  // The device flag starts clean on every call: a good lookup right after a bad one passes.
  kernels::embedding_forward(on_gpu(ids_from({1, 2, 49, 3})), table, out);
  const Tensor want = table.to(Device::cpu()).slice(0, 49, 50);
  EXPECT_EQ(max_abs_diff(out.to(Device::cpu()).slice(0, 2, 3), want), 0.0);
}

// ---- cross-entropy -------------------------------------------------------------------------

struct LossCase {
  const char* name;
  int64_t N, V;
  DType dtype;
};
std::ostream& operator<<(std::ostream& os, const LossCase& c) { return os << c.name; }

// Targets in [0, V) with every seventh row ignored.
Tensor targets_with_ignored(int64_t N, int64_t V, uint32_t stream) {
  Tensor t = random_ids({N}, static_cast<int32_t>(V), stream);
  for (int64_t i = 3; i < N; i += 7) t.data<int32_t>()[i] = kIgnore;
  return t;
}

class CrossEntropyGpu : public ::testing::TestWithParam<LossCase> {};

TEST_P(CrossEntropyGpu, ForwardBackwardMatchCpu) {
  const LossCase& c = GetParam();
  const DType dt = c.dtype;
  // Logits spread over [-8, 8]: a softmax far from uniform, so exp's accuracy matters.
  const Tensor logits = reference_input(random_tensor({c.N, c.V}, 91, -8, 8), dt);
  const Tensor targets = targets_with_ignored(c.N, c.V, 92);
  Tensor losses = Tensor::empty({c.N}), lse = Tensor::empty({c.N});
  const int64_t count = kernels::cross_entropy_forward(logits, targets, kIgnore, losses, lse);

  const Tensor lg = gpu_operand(logits, dt), tg = on_gpu(targets);
  Tensor lossesg = Tensor::empty({c.N}, F32, gpu()), lseg = Tensor::empty({c.N}, F32, gpu());
  EXPECT_EQ(kernels::cross_entropy_forward(lg, tg, kIgnore, lossesg, lseg), count);
  // f32 statistics of bf16-exact logits: only exp's accuracy and the summation order differ.
  EXPECT_GPU_NEAR(lossesg, losses, kF32Tol, "losses");
  EXPECT_GPU_NEAR(lseg, lse, kF32Tol, "lse");

  const float grad_scale = 1.0f / static_cast<float>(count);
  Tensor dlogits = Tensor::empty({c.N, c.V});
  kernels::cross_entropy_backward(logits, targets, lse, kIgnore, grad_scale, dlogits);
  Tensor dlg = Tensor::empty({c.N, c.V}, dt, gpu());
  kernels::cross_entropy_backward(lg, tg, lseg, kIgnore, grad_scale, dlg);
  const double dtol = dt == BF16 ? kBf16Rounding + kF32Tol : kF32Tol;
  EXPECT_GPU_NEAR(dlg, dlogits, dtol, "dlogits");

  // In place (dlogits aliasing logits), as the model's head does.
  Tensor inplace = gpu_operand(logits, dt);
  kernels::cross_entropy_backward(inplace, tg, lseg, kIgnore, grad_scale, inplace);
  EXPECT_GPU_NEAR(inplace, dlogits, dtol, "dlogits in place");
}

TEST_P(CrossEntropyGpu, ShardHalvesMatchCpu) {
  const LossCase& c = GetParam();
  const DType dt = c.dtype;
  const int64_t start = c.V / 3, Vs = c.V / 2;  // one shard in the middle of the vocabulary
  const Tensor full = reference_input(random_tensor({c.N, c.V}, 93, -8, 8), dt);
  const Tensor logits = full.slice(1, start, start + Vs).contiguous();
  const Tensor targets = targets_with_ignored(c.N, c.V, 94);
  Tensor row_max = Tensor::empty({c.N}), sum_exp = Tensor::empty({c.N}), tlogit = Tensor::empty({c.N});
  kernels::cross_entropy_shard_stats(logits, targets, start, kIgnore, row_max, sum_exp, tlogit);
  const Tensor lg = gpu_operand(logits, dt), tg = on_gpu(targets);
  Tensor row_maxg = Tensor::empty({c.N}, F32, gpu()), sum_expg = Tensor::empty({c.N}, F32, gpu());
  Tensor tlogitg = Tensor::empty({c.N}, F32, gpu());
  kernels::cross_entropy_shard_stats(lg, tg, start, kIgnore, row_maxg, sum_expg, tlogitg);
  EXPECT_EQ(gpu_error(row_maxg, row_max), 0.0) << "row max is a selection: exact";
  EXPECT_EQ(gpu_error(tlogitg, tlogit), 0.0) << "target logit is a selection: exact";
  EXPECT_GPU_NEAR(sum_expg, sum_exp, kF32Tol, "sum_exp");

  // The backward against the full rows' lse (what the collective would produce).
  Tensor losses = Tensor::empty({c.N}), lse = Tensor::empty({c.N});
  kernels::cross_entropy_forward(full, targets, kIgnore, losses, lse);
  Tensor d = Tensor::empty({c.N, Vs});
  kernels::cross_entropy_shard_backward(logits, targets, start, lse, kIgnore, 0.5f, d);
  Tensor dg = Tensor::empty({c.N, Vs}, dt, gpu());
  kernels::cross_entropy_shard_backward(lg, tg, start, on_gpu(lse), kIgnore, 0.5f, dg);
  EXPECT_GPU_NEAR(dg, d, dt == BF16 ? kBf16Rounding + kF32Tol : kF32Tol, "shard dlogits");
}

const LossCase kLossCases[] = {
    {"f32_v1000", 64, 1000, F32},
    {"f32_v50257_gpt2", 8, 50257, F32},
    {"bf16_v32000_llama", 16, 32000, BF16},
    {"bf16_v50257_gpt2", 8, 50257, BF16},
    {"bf16_v131_tiny", 33, 131, BF16},
};
INSTANTIATE_TEST_SUITE_P(Cases, CrossEntropyGpu, ::testing::ValuesIn(kLossCases),
                         [](const ::testing::TestParamInfo<LossCase>& i) { return std::string(i.param.name); });

TEST(CrossEntropyGpuErrors, OutOfRangeTargetThrowsNamingIt) {
  const Tensor logits = on_gpu(random_tensor({3, 20}, 95));
  const Tensor targets = on_gpu(ids_from({0, 20, 5}));
  Tensor losses = Tensor::empty({3}, F32, gpu()), lse = Tensor::empty({3}, F32, gpu());
  // "20" alone would also match V = 20 in the message: ask for the target and its row.
  expect_error_containing([&] { kernels::cross_entropy_forward(logits, targets, kIgnore, losses, lse); },
                          {"target 20 at row 1"});
  // The device flags start clean on every call: good targets right after bad ones pass, and
  // the count is this call's.
  EXPECT_EQ(kernels::cross_entropy_forward(logits, on_gpu(ids_from({0, kIgnore, 5})), kIgnore, losses, lse), 2);
}

}  // namespace
