// Ulysses sequence-parallel attention against single-process attention: every rank
// builds the same full q, k, v, dout, runs the kernels on the whole sequence as the
// reference, then runs Ulysses on its slice; its out, dq, dk, dv must equal the
// reference rows of that slice. Runs at 2, 3 and 4 ranks (at 3, T = 64 and 67 are both uneven).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <string>

#include "kernels/attention.h"
#include "parallel/ulysses.h"
#include "tests/support/mpi_world.h"
#include "tests/support/reference.h"

using namespace anvil;
using anvil::testing::error_of;
using anvil::testing::max_rel_diff;
using anvil::testing::random_tensor;
using anvil::testing::world;

namespace {

struct Case {
  int64_t T, Hq, Hkv;
};

constexpr int64_t kB = 2, kD = 16;

// The full problem every rank builds alike, and the single-process answer.
struct Problem {
  Tensor q, k, v, dout;          // full sequence [B, T, H, D]
  Tensor out, dq, dk, dv;        // reference
  float scale = 1.0f / std::sqrt(static_cast<float>(kD));
};

Problem make_problem(const Case& c) {
  Problem p;
  p.q = random_tensor({kB, c.T, c.Hq, kD}, 11);
  p.k = random_tensor({kB, c.T, c.Hkv, kD}, 12);
  p.v = random_tensor({kB, c.T, c.Hkv, kD}, 13);
  p.dout = random_tensor({kB, c.T, c.Hq, kD}, 14);
  Tensor lse;
  kernels::attention_forward(p.q, p.k, p.v, p.scale, 0, p.out, lse);
  kernels::attention_backward(p.dout, p.q, p.k, p.v, p.out, lse, p.scale, 0, p.dq, p.dk, p.dv);
  return p;
}

// This rank's rows of a full-sequence tensor, as a contiguous copy.
Tensor my_rows(const Tensor& full, const SequencePartition& part, int rank) {
  return full.slice(1, part.start(rank), part.end(rank)).clone();
}

struct Result {
  Tensor out, dq, dk, dv;
};

Result run_ulysses(Communicator& sp, const Problem& p, const SequencePartition& part) {
  const int me = sp.rank();
  Result r;
  UlyssesSaved saved = ulysses_attention_forward(sp, part, my_rows(p.q, part, me), my_rows(p.k, part, me),
                                                 my_rows(p.v, part, me), p.scale, r.out);
  ulysses_attention_backward(sp, my_rows(p.dout, part, me), saved, r.dq, r.dk, r.dv);
  return r;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  return ca.shape() == cb.shape() && (ca.nbytes() == 0 || std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0);
}


}  // namespace

TEST(SequencePartition, BalancedContiguousSlices) {
  for (int P = 1; P <= 5; ++P) {
    for (int64_t T : {0, 1, 3, 7, 64, 67}) {
      const SequencePartition part = partition_sequence(T, P);
      int64_t next = 0;
      for (int r = 0; r < P; ++r) {
        SCOPED_TRACE("T=" + std::to_string(T) + " P=" + std::to_string(P) + " r=" + std::to_string(r));
        EXPECT_EQ(part.start(r), next);
        EXPECT_EQ(part.length(r), T / P + (r < T % P ? 1 : 0));  // the first T % P ranks get one more
        EXPECT_LE(part.length(r), part.max_length());
        for (int64_t pos = part.start(r); pos < part.end(r); ++pos) EXPECT_EQ(part.owner(pos), r);
        next = part.end(r);
      }
      EXPECT_EQ(next, T);
      EXPECT_EQ(part.even(), T % P == 0);
    }
  }
  const SequencePartition p67 = partition_sequence(67, 4);  // 17, 17, 17, 16
  EXPECT_EQ(p67.length(0), 17);
  EXPECT_EQ(p67.length(3), 16);
  EXPECT_EQ(p67.start(3), 51);
  EXPECT_NE(error_of([] { partition_sequence(10, 0); }).find("at least 1, got 0"), std::string::npos);
  EXPECT_NE(error_of([] { partition_sequence(-1, 2); }).find("non-negative, got -1"), std::string::npos);
}

// T = 64 divides 2 and 4 but not 3; T = 67 divides none; T = 3 leaves rank 3 of 4 empty.
// Hq = 8 with Hkv = 8, 4, 2 runs at 2 and 4 ranks; Hq = 6 and 12 with Hkv = 6, 3 at 3 ranks.
// Each rank count runs the cases whose KV heads it divides (the others are the error test's).
TEST(Ulysses, OutAndGradsOnEachSliceMatchTheReference) {
  Communicator& sp = *world();
  const int P = sp.size(), me = sp.rank();
  int ran = 0;
  for (const Case& c : {Case{64, 8, 8}, Case{64, 8, 4}, Case{64, 8, 2}, Case{67, 8, 8}, Case{67, 8, 4},
                        Case{67, 8, 2}, Case{64, 6, 6}, Case{64, 12, 3}, Case{67, 6, 6}, Case{67, 6, 3},
                        Case{67, 12, 3}, Case{3, 8, 4}, Case{3, 6, 3}}) {
    if (c.Hkv % P != 0) continue;
    ++ran;
    const Problem p = make_problem(c);
    const SequencePartition part = partition_sequence(c.T, P);
    const Result r = run_ulysses(sp, p, part);
    SCOPED_TRACE("T=" + std::to_string(c.T) + " Hq=" + std::to_string(c.Hq) + " Hkv=" + std::to_string(c.Hkv) +
                 ", rank " + std::to_string(me) + " of " + std::to_string(P) + ", positions " +
                 std::to_string(part.start(me)) + " .. " + std::to_string(part.end(me) - 1));
    EXPECT_LE(max_rel_diff(r.out, my_rows(p.out, part, me)), 1e-5);
    EXPECT_LE(max_rel_diff(r.dq, my_rows(p.dq, part, me)), 1e-5);
    EXPECT_LE(max_rel_diff(r.dk, my_rows(p.dk, part, me)), 1e-5);
    EXPECT_LE(max_rel_diff(r.dv, my_rows(p.dv, part, me)), 1e-5);
    ASSERT_EQ(r.out.shape(), Shape({kB, part.length(me), c.Hq, kD}));
    ASSERT_EQ(r.dk.shape(), Shape({kB, part.length(me), c.Hkv, kD}));
  }
  EXPECT_GE(ran, 5) << "too few shapes ran at " << P << " ranks";
}

TEST(Ulysses, StridedViewsIntoFusedBuffersGiveTheSameBits) {
  // The way models/Attention calls it: q, k, v are views of one fused projection and
  // dq, dk, dv are written into one fused gradient buffer.
  Communicator& sp = *world();
  const int P = sp.size(), me = sp.rank();
  const Case c{67, 4 * P, 2 * P};
  const Problem p = make_problem(c);
  const SequencePartition part = partition_sequence(c.T, P);
  const Result plain = run_ulysses(sp, p, part);
  const int64_t Tl = part.length(me), Hq = c.Hq, Hkv = c.Hkv;
  Tensor fused = Tensor::empty({kB, Tl, Hq + 2 * Hkv, kD});
  Tensor q = fused.slice(2, 0, Hq), k = fused.slice(2, Hq, Hq + Hkv), v = fused.slice(2, Hq + Hkv, Hq + 2 * Hkv);
  q.copy_(my_rows(p.q, part, me));
  k.copy_(my_rows(p.k, part, me));
  v.copy_(my_rows(p.v, part, me));
  Tensor out_buf = Tensor::full({kB, Tl, Hq + 1, kD}, 7.0);  // out written into a strided view
  Tensor out = out_buf.slice(2, 1, Hq + 1);
  UlyssesSaved saved = ulysses_attention_forward(sp, part, q, k, v, p.scale, out);
  Tensor grad = Tensor::full({kB, Tl, Hq + 2 * Hkv, kD}, 7.0);
  Tensor dq = grad.slice(2, 0, Hq), dk = grad.slice(2, Hq, Hq + Hkv), dv = grad.slice(2, Hq + Hkv, Hq + 2 * Hkv);
  ulysses_attention_backward(sp, my_rows(p.dout, part, me), saved, dq, dk, dv);
  EXPECT_TRUE(bitwise_equal(out, plain.out));
  EXPECT_TRUE(bitwise_equal(dq, plain.dq));
  EXPECT_TRUE(bitwise_equal(dk, plain.dk));
  EXPECT_TRUE(bitwise_equal(dv, plain.dv));
  EXPECT_TRUE(bitwise_equal(out_buf.slice(2, 0, 1), Tensor::full({kB, Tl, 1, kD}, 7.0)));  // untouched
}

TEST(Ulysses, BitwiseDeterministicAcrossRuns) {
  Communicator& sp = *world();
  const int P = sp.size();
  const Case c{67, 4 * P, 2 * P};  // uneven at every P > 1, GQA group 2
  const Problem p = make_problem(c);
  const SequencePartition part = partition_sequence(c.T, P);
  const Result a = run_ulysses(sp, p, part), b = run_ulysses(sp, p, part);
  EXPECT_TRUE(bitwise_equal(a.out, b.out));
  EXPECT_TRUE(bitwise_equal(a.dq, b.dq));
  EXPECT_TRUE(bitwise_equal(a.dk, b.dk));
  EXPECT_TRUE(bitwise_equal(a.dv, b.dv));
}

TEST(Ulysses, SpThatDoesNotDivideKvHeadsIsRefusedOnEveryRank) {
  Communicator& sp = *world();
  const int P = sp.size();
  ASSERT_GT(P, 1) << "registered for 2+ ranks: at 1 rank every head count divides sp";
  const int64_t Hkv = P + 1, Hq = 2 * Hkv, T = 8;  // P never divides P + 1
  const SequencePartition part = partition_sequence(T, P);
  const int64_t Tl = part.length(sp.rank());
  Tensor out;
  const std::string msg = error_of([&] {
    ulysses_attention_forward(sp, part, Tensor::zeros({kB, Tl, Hq, kD}), Tensor::zeros({kB, Tl, Hkv, kD}),
                              Tensor::zeros({kB, Tl, Hkv, kD}), 1.0f, out);
  });
  EXPECT_NE(msg.find("sp = " + std::to_string(P)), std::string::npos) << msg;
  EXPECT_NE(msg.find("Hkv = " + std::to_string(Hkv)), std::string::npos) << msg;
  EXPECT_NE(msg.find("whole KV heads"), std::string::npos) << msg;
  EXPECT_EQ(error_of([&] { check_ulysses_heads(P, 2 * P, P); }), "(no error)");
  // Slices that do not follow the partition are refused too (here on every rank alike).
  const std::string wrong_length = error_of([&] {
    ulysses_attention_forward(sp, part, Tensor::zeros({kB, Tl + 1, 2 * P, kD}), Tensor::zeros({kB, Tl + 1, P, kD}),
                              Tensor::zeros({kB, Tl + 1, P, kD}), 1.0f, out);
  });
  EXPECT_NE(wrong_length.find("holds " + std::to_string(Tl + 1) + " positions"), std::string::npos) << wrong_length;
  const std::string wrong_ranks = error_of([&] {
    ulysses_attention_forward(sp, partition_sequence(T, P + 1), Tensor::zeros({kB, Tl, 2 * P, kD}),
                              Tensor::zeros({kB, Tl, P, kD}), Tensor::zeros({kB, Tl, P, kD}), 1.0f, out);
  });
  EXPECT_NE(wrong_ranks.find("over " + std::to_string(P + 1) + " ranks"), std::string::npos) << wrong_ranks;
}

TEST(Ulysses, CommBytesAreWhatLeavesTheRank) {
  Communicator& sp = *world();
  const int P = sp.size(), me = sp.rank();
  for (const Case c : {Case{64, 4 * P, 4 * P}, Case{67, 4 * P, 2 * P}}) {
    SCOPED_TRACE("T=" + std::to_string(c.T));
    const Problem p = make_problem(c);
    const SequencePartition part = partition_sequence(c.T, P);
    const int64_t Tl = part.length(me), hq = c.Hq / P, hkv = c.Hkv / P, row = kB * kD * 4;
    const UlyssesCommBytes bytes = ulysses_comm_bytes(part, me, kB, c.Hq, c.Hkv, kD);
    // What the communicator was handed, less what each exchange keeps on this rank
    // (my positions of my heads), is what went to other ranks.
    const size_t before = sp.payload_bytes();
    Tensor out;
    UlyssesSaved saved = ulysses_attention_forward(sp, part, my_rows(p.q, part, me), my_rows(p.k, part, me),
                                                   my_rows(p.v, part, me), p.scale, out);
    const int64_t handed_fwd = static_cast<int64_t>(sp.payload_bytes() - before);
    const int64_t kept_fwd = Tl * (hq + 2 * hkv) * row + Tl * hq * row;
    EXPECT_EQ(handed_fwd - kept_fwd, bytes.forward());
    const size_t mid = sp.payload_bytes();
    Tensor dq, dk, dv;
    ulysses_attention_backward(sp, my_rows(p.dout, part, me), saved, dq, dk, dv);
    const int64_t handed_bwd = static_cast<int64_t>(sp.payload_bytes() - mid);
    EXPECT_EQ(handed_bwd - kept_fwd, bytes.backward());
    if (part.even()) {
      // The textbook figure: each of the 4 all-to-alls moves (P-1)/P of a local [B, T/P, H, D] tensor.
      const int64_t local = kB * (c.T / P) * c.Hq * kD * 4;  // Hq = Hkv here
      EXPECT_EQ(bytes.forward(), 4 * local * (P - 1) / P);
      EXPECT_EQ(bytes.backward(), bytes.forward());
      EXPECT_EQ(bytes.q, local * (P - 1) / P);
      EXPECT_EQ(bytes.out, local * (P - 1) / P);
    }
  }
}
