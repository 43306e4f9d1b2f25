// The MPI communicator's collectives against results each rank computes locally
// (every rank's input is a known function of its rank). Runs at 1-4 ranks.
#include <gtest/gtest.h>

#include <numeric>

#include "tests/support/mpi_world.h"

using namespace anvil;
using anvil::testing::world;

namespace {
// Rank r's input: element i = 100*r + i + 0.5 (exact in f32).
Tensor input_of(int r, int64_t n) {
  Tensor t = Tensor::empty({n});
  for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = 100.0f * r + i + 0.5f;
  return t;
}
}  // namespace

TEST(Communicator, AllReduceSumMaxMinAndAsync) {
  auto w = world();
  const int P = w->size();
  const int64_t n = 37;
  Tensor sum = input_of(w->rank(), n), mx = input_of(w->rank(), n), mn = input_of(w->rank(), n);
  w->all_reduce(sum, ReduceOp::Sum);
  w->all_reduce(mx, ReduceOp::Max);
  Tensor asy = input_of(w->rank(), n);
  auto handle = w->all_reduce_async(asy, ReduceOp::Sum);
  w->all_reduce(mn, ReduceOp::Min);
  handle->wait();
  for (int64_t i = 0; i < n; ++i) {
    double expect = 0;
    for (int r = 0; r < P; ++r) expect += 100.0 * r + i + 0.5;
    EXPECT_EQ(sum.item_at({i}), expect);
    EXPECT_EQ(asy.item_at({i}), expect);
    EXPECT_EQ(mx.item_at({i}), 100.0 * (P - 1) + i + 0.5);
    EXPECT_EQ(mn.item_at({i}), i + 0.5);
  }
}

TEST(Communicator, ReduceScatterAndAllGatherAreConjugate) {
  auto w = world();
  const int P = w->size(), me = w->rank();
  const int64_t chunk = 5;
  Tensor in = input_of(me, chunk * P), out = Tensor::empty({chunk});
  w->reduce_scatter(in, out, ReduceOp::Sum);
  for (int64_t i = 0; i < chunk; ++i) {
    double expect = 0;
    for (int r = 0; r < P; ++r) expect += 100.0 * r + me * chunk + i + 0.5;
    EXPECT_EQ(out.item_at({i}), expect);
  }
  Tensor async_out = Tensor::empty({chunk});
  auto handle = w->reduce_scatter_async(in, async_out, ReduceOp::Sum);
  handle->wait();
  for (int64_t i = 0; i < chunk; ++i) EXPECT_EQ(async_out.item_at({i}), out.item_at({i}));
  Tensor gathered = Tensor::empty({chunk * P});
  w->all_gather(input_of(me, chunk), gathered);
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < chunk; ++i) EXPECT_EQ(gathered.item_at({r * chunk + i}), 100.0 * r + i + 0.5);
  Tensor wrong = Tensor::empty({chunk + 1});
  EXPECT_THROW(w->reduce_scatter(in, wrong, ReduceOp::Sum), Error);
}

TEST(Communicator, AllToAllAndVariableCounts) {
  auto w = world();
  const int P = w->size(), me = w->rank();
  const int64_t chunk = 3;
  Tensor in = input_of(me, chunk * P), out = Tensor::empty({chunk * P});
  w->all_to_all(in, out);
  for (int src = 0; src < P; ++src)  // chunk `me` of rank src's input
    for (int64_t i = 0; i < chunk; ++i) EXPECT_EQ(out.item_at({src * chunk + i}), 100.0 * src + me * chunk + i + 0.5);
  // Rank r sends (r + j + 1) elements to rank j, taken in order from its input.
  std::vector<int64_t> send(P), recv(P);
  for (int j = 0; j < P; ++j) { send[j] = me + j + 1; recv[j] = j + me + 1; }
  const int64_t total_send = std::accumulate(send.begin(), send.end(), int64_t{0});
  const int64_t total_recv = std::accumulate(recv.begin(), recv.end(), int64_t{0});
  Tensor vin = input_of(me, total_send), vout = Tensor::full({total_recv}, -1.0);
  w->all_to_allv(vin, send, vout, recv);
  int64_t pos = 0;
  for (int src = 0; src < P; ++src) {
    int64_t offset = 0;  // where rank src's block for me starts in its input
    for (int j = 0; j < me; ++j) offset += src + j + 1;
    for (int64_t i = 0; i < recv[src]; ++i) EXPECT_EQ(vout.item_at({pos++}), 100.0 * src + offset + i + 0.5);
  }
}

TEST(Communicator, BroadcastSendRecvAndSplit) {
  auto w = world();
  const int P = w->size(), me = w->rank();
  Tensor b = input_of(me, 9);
  w->broadcast(b, P - 1);
  EXPECT_EQ(b.item_at({4}), 100.0 * (P - 1) + 4.5);
  if (P > 1) {  // a ring: even ranks send first so nothing deadlocks
    Tensor mine = input_of(me, 6), from_left = Tensor::empty({6});
    const int right = (me + 1) % P, left = (me + P - 1) % P;
    if (me % 2 == 0) { w->send(mine, right, 7); w->recv(from_left, left, 7); }
    else { w->recv(from_left, left, 7); w->send(mine, right, 7); }
    EXPECT_EQ(from_left.item_at({2}), 100.0 * left + 2.5);
  }
  // Split by parity: the even and the odd ranks each reduce among themselves.
  auto half = w->split(me % 2, me);
  EXPECT_EQ(half->size(), (P + 1 - me % 2) / 2);
  EXPECT_EQ(half->rank(), me / 2);
  Tensor one = Tensor::full({1}, 1.0);
  half->all_reduce(one, ReduceOp::Sum);
  EXPECT_EQ(one.item(), half->size());
  w->barrier();
  EXPECT_GT(w->payload_bytes(), 0u);
}

// Every rank sends to its right neighbour before receiving from its left: with a blocking
// send of a message far past MPI's eager limit (4 MB here) this deadlocks; isend must not.
// The handle keeps the sent tensor alive after the caller drops it; irecv fills its buffer.
TEST(Communicator, NonBlockingSendsBeforeReceivesDoNotDeadlock) {
  auto w = world();
  const int P = w->size(), me = w->rank();
  const int64_t n = 1 << 20;
  const int right = (me + 1) % P, left = (me + P - 1) % P;
  std::unique_ptr<CommHandle> sent = w->isend(input_of(me, n), right, 3);  // the tensor's only owner is the handle
  Tensor from_left = Tensor::full({n}, -1.0);
  std::unique_ptr<CommHandle> received = w->irecv(from_left, left, 3);
  received->wait();
  EXPECT_TRUE(received->test());
  sent->wait();
  EXPECT_TRUE(sent->test());
  const Tensor expected = input_of(left, n);
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i) wrong += from_left.data<float>()[i] != expected.data<float>()[i];
  EXPECT_EQ(wrong, 0);
}
