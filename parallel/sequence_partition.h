// How a sequence of T tokens is split over the P ranks of a sequence-parallel group:
// contiguous slices in rank order, balanced, with no padding. The trainer slices its
// batches (ids and targets) with sequence_slice; Ulysses attention routes by it.
//
// Uneven T needs no padding or masking: slices differ by at most one token and Ulysses
// moves them with all_to_allv, so every rank computes exactly the T real positions. That
// is what "pad to a multiple of sp and mask the pad" computes, without the pad's work.
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "core/tensor.h"
#include "parallel/communicator.h"

namespace anvil {

// The balanced rule: rank r holds positions [start(r), start(r) + length(r)), where the
// first T % P ranks get floor(T / P) + 1 tokens and the rest floor(T / P). Lengths
// differ by at most one token, the slices tile [0, T) in rank order, and T need not
// divide P (T < P is allowed: the last ranks then hold no tokens).
struct SequencePartition {
  int64_t total = 0;  // T, the full sequence length
  int ranks = 1;      // P, the sequence-parallel degree

  int64_t base() const { return total / ranks; }
  int64_t extra() const { return total % ranks; }  // ranks holding one more token
  int64_t length(int r) const { return base() + (r < extra() ? 1 : 0); }
  int64_t start(int r) const { return r * base() + std::min<int64_t>(r, extra()); }
  int64_t end(int r) const { return start(r) + length(r); }
  int64_t max_length() const { return base() + (extra() > 0 ? 1 : 0); }
  bool even() const { return extra() == 0; }
  // The rank holding position p (0 <= p < T).
  int owner(int64_t p) const {
    const int64_t big = extra() * (base() + 1);  // positions held by the longer ranks
    return static_cast<int>(p < big ? p / (base() + 1) : extra() + (p - big) / base());
  }
};

// The balanced partition of T tokens over P ranks (see SequencePartition).
inline SequencePartition partition_sequence(int64_t T, int P) {
  ANVIL_CHECK(P >= 1, "partition_sequence: the sequence-parallel degree must be at least 1, got ", P);
  ANVIL_CHECK(T >= 0, "partition_sequence: the sequence length must be non-negative, got ", T);
  return SequencePartition{T, P};
}

// This sp rank's slice of a batch [B, T, ...] along dim 1: positions part.start(rank) ..
// part.end(rank) - 1 of partition_sequence(T, sp.size()), contiguous. Every
// rank of the sp group passes the same full batch (tokens and their targets alike).
inline Tensor sequence_slice(const Tensor& x, const Communicator& sp) {
  ANVIL_CHECK(x.defined() && x.dim() >= 2, "sequence_slice: expected a batch [B, T, ...], got ",
              x.defined() ? x.describe() : std::string("an undefined tensor"));
  const SequencePartition part = partition_sequence(x.size(1), sp.size());
  return x.slice(1, part.start(sp.rank()), part.end(sp.rank())).contiguous();
}

}  // namespace anvil
