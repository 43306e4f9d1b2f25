// kernels/embedding: lookup and scatter-add against naive loops, repeated ids,
// finite differences, determinism across thread counts and out-of-range ids.
//
// Tolerances: the forward copies rows, so it is exact. The backward adds dout rows
// in position order per element, which is exactly what the naive f32 loop does, so
// it is compared bitwise with it; against double it is within n * 2^-24.
#include <gtest/gtest.h>

#include "kernels/embedding.h"
#include "tests/support/kernel_check.h"
#include "tests/support/reference.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

// dtable[ids[i], :] += dout[i, :] in position order, f32 like the kernel's contract.
Tensor naive_backward(const Tensor& ids, const Tensor& dout, const Tensor& dtable0) {
  Tensor dtable = dtable0.clone();
  const int64_t C = dtable.size(1);
  const int32_t* id = ids.data<int32_t>();
  const auto vd = dout.to_vector();
  float* p = dtable.data<float>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    for (int64_t j = 0; j < C; ++j) p[id[i] * C + j] += vd[i * C + j];
  return dtable;
}

}  // namespace

TEST(Embedding, ForwardCopiesTheRows) {
  for (const auto& [V, C] : {std::pair<int64_t, int64_t>{1, 1}, {11, 7}, {50, 129}}) {
    Tensor table = random_tensor({V, C}, 1);
    Tensor ids = random_ids({2, 3}, static_cast<int32_t>(V), 2);
    Tensor out = Tensor::full({2, 3, C}, -1.0);
    kernels::embedding_forward(ids, table, out);
    const auto vt = values(table), vo = values(out);
    const int32_t* id = ids.data<int32_t>();
    for (int64_t i = 0; i < 6; ++i)
      for (int64_t j = 0; j < C; ++j) ASSERT_EQ(vo[i * C + j], vt[id[i] * C + j]) << i << "," << j;
    // A flattened [N, C] output works too.
    Tensor flat = Tensor::empty({6, C});
    kernels::embedding_forward(ids, table, flat);
    EXPECT_TRUE(bitwise_equal(flat, out.view({6, C})));
  }
}

TEST(Embedding, BackwardAccumulatesRepeatedIds) {
  // Id 2 appears three times, id 0 twice; ids 1 and 4 never: their rows keep the old value.
  Tensor ids = Tensor::from_vector(std::vector<int32_t>{2, 0, 2, 3, 0, 2}, {6});
  Tensor dout = random_tensor({6, 5}, 3), dtable = random_tensor({5, 5}, 4);
  const Tensor want = naive_backward(ids, dout, dtable);
  const auto d = values(dout), t0 = values(dtable);
  kernels::embedding_backward(ids, dout, dtable);
  EXPECT_TRUE(bitwise_equal(dtable, want));
  const auto got = values(dtable);
  for (int64_t j = 0; j < 5; ++j) {
    EXPECT_NEAR(got[2 * 5 + j], t0[2 * 5 + j] + d[0 * 5 + j] + d[2 * 5 + j] + d[5 * 5 + j], 1e-6);
    EXPECT_NEAR(got[0 * 5 + j], t0[0 * 5 + j] + d[1 * 5 + j] + d[4 * 5 + j], 1e-6);
    EXPECT_EQ(got[1 * 5 + j], t0[1 * 5 + j]);
    EXPECT_EQ(got[4 * 5 + j], t0[4 * 5 + j]);
  }
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
  // loss = <embedding(ids, table), r> is linear in table, so central differences
  // are exact up to f32 rounding of the loss: ~ n * 2^-24 / eps ~ 1e-4 relative.
  Tensor table = random_tensor({6, 4}, 5), r = random_tensor({9, 4}, 6);
  Tensor ids = random_ids({9}, 6, 7);
  Tensor out = Tensor::empty({9, 4});
  auto loss = [&] {
    kernels::embedding_forward(ids, table, out);
    return dot(out, r);
  };
  const Tensor fd = finite_difference_grad(table, loss, 1e-2);
  Tensor dtable = Tensor::zeros({6, 4});
  kernels::embedding_backward(ids, r, dtable);
  EXPECT_LT(max_rel_diff(dtable, fd), 1e-2);
}

TEST(Embedding, BackwardIsIndependentOfThreadCount) {
  // Enough columns for several parallel blocks, many repeats per id.
  Tensor ids = random_ids({4000}, 37, 8);
  Tensor dout = random_tensor({4000, 300}, 9);
  Tensor one = Tensor::zeros({37, 300}), three = Tensor::zeros({37, 300});
  with_threads(1, [&] { kernels::embedding_backward(ids, dout, one); });
  with_threads(3, [&] { kernels::embedding_backward(ids, dout, three); });
  EXPECT_TRUE(bitwise_equal(one, three));
  EXPECT_TRUE(bitwise_equal(one, naive_backward(ids, dout, Tensor::zeros({37, 300}))));
}

TEST(Embedding, StridedTableAndOutput) {
  // A table that is a column slice of a wider buffer (e.g. a tied, padded matrix).
  Tensor buf = random_tensor({8, 12}, 10);
  Tensor table = buf.slice(1, 2, 9);
  Tensor ids = Tensor::from_vector(std::vector<int32_t>{7, 0, 3}, {3});
  Tensor obuf = Tensor::zeros({3, 10});
  Tensor out = obuf.slice(1, 1, 8);
  kernels::embedding_forward(ids, table, out);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 7; ++j)
      ASSERT_EQ(out.item_at({i, j}), table.item_at({ids.data<int32_t>()[i], j}));
  EXPECT_EQ(obuf.item_at({0, 0}), 0.0);
  EXPECT_EQ(obuf.item_at({2, 9}), 0.0);
}

TEST(Embedding, OutOfRangeIdsThrowNamingTheId) {
  Tensor table = random_tensor({10, 3}, 11), out = Tensor::empty({4, 3}), dtable = Tensor::zeros({10, 3});
  Tensor big = Tensor::from_vector(std::vector<int32_t>{1, 2, 10, 3}, {4});
  expect_error_containing([&] { kernels::embedding_forward(big, table, out); },
                          {"embedding_forward", "id 10", "position 2", "10)"});
  Tensor neg = Tensor::from_vector(std::vector<int32_t>{-1, 2, 0, 3}, {4});
  expect_error_containing([&] { kernels::embedding_forward(neg, table, out); }, {"id -1", "position 0"});
  const Tensor before = dtable.clone();
  expect_error_containing([&] { kernels::embedding_backward(big, out, dtable); }, {"embedding_backward", "id 10"});
  EXPECT_TRUE(bitwise_equal(dtable, before));  // checked before anything is written
}

TEST(Embedding, RejectsBadShapesAndDevices) {
  Tensor table = random_tensor({10, 3}, 12), ids = random_ids({4}, 10, 13);
  Tensor out = Tensor::empty({4, 5});
  expect_error_containing([&] { kernels::embedding_forward(ids, table, out); }, {"[4, 5]", "[10, 3]"});
  EXPECT_THROW(kernels::embedding_forward(ids.to(DType::F32), table, out), Error);
  Tensor oc = fake_cuda_tensor({4, 3});
  expect_error_containing([&] { kernels::embedding_forward(ids, table, oc); },
                          {"embedding_forward", "out", "cuda:0", cuda_operand_on_cpu_error()});
}
