// Ulysses sequence parallelism (DeepSpeed-Ulysses): attention over a sequence split
// across the P ranks of an sp communicator. An all-to-all turns "my tokens, all heads"
// into "all tokens, my heads", the local causal GQA kernel attends over the full
// sequence, and the conjugate all-to-all turns the output back. Backward mirrors it.
//
// Layouts (per rank r of the sp communicator, T split by SequencePartition):
//   sequence layout  q [B, Tl, Hq, D], k, v [B, Tl, Hkv, D], out [B, Tl, Hq, D],
//                    Tl = part.length(r), positions part.start(r) ..
//   head layout      all T positions for KV heads [r*Hkv/P, (r+1)*Hkv/P) and the query
//                    heads that use them, [r*Hq/P, (r+1)*Hq/P): GQA groups stay whole.
//
// Uneven T: slices are balanced (lengths differ by one) and moved with all_to_allv, so
// there is no padding at all: every rank attends over exactly the T real positions and
// no position needs masking or a zeroed gradient.
//
// Communication: q, k and v travel in one all_to_allv (packed per destination), out in
// a second; backward likewise (dout, then dq|dk|dv). The bytes are those of the four
// textbook all-to-alls (q, k, v, out), each moving (P-1)/P of its local tensor; fusing
// q/k/v only saves two message latencies. See ulysses_comm_bytes.
//
// q, k, v and the outputs share one dtype (f32, or bf16 on a GPU) and device; the exchange
// buffers follow them (host buffers for the MPI backend, device buffers for NCCL). The lse is
// f32. The heads Ulysses sees are those of this tp rank: with tensor parallelism, pass the
// tp-local heads.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "parallel/communicator.h"
#include "parallel/sequence_partition.h"

namespace anvil {

// What backward needs, in the head layout (kept by the caller, e.g. in a module Cache).
struct UlyssesSaved {
  SequencePartition part;
  int64_t q_heads = 0, kv_heads = 0;  // global Hq, Hkv (the local ones are these / P)
  float scale = 1.0f;
  int64_t window = 0;  // sliding window (a query sees the last `window` positions); 0 = all
  Tensor qkv;   // [T, B, hq + 2 hkv, D] contiguous: the gathered q, k, v of the local heads
  Tensor q, k, v;  // [B, T, h, D] views into qkv
  Tensor out;   // [B, T, hq, D]: the local heads' attention output (a view, T-major storage)
  Tensor lse;   // f32 [B, hq, T]
};

// The saved state from its three tensors (qkv, out, lse as ulysses_attention_forward made
// them), for a caller that keeps only tensors between forward and backward (a module Cache).
UlyssesSaved ulysses_saved(const SequencePartition& part, int64_t q_heads, int64_t kv_heads, float scale, Tensor qkv,
                           Tensor out, Tensor lse, int64_t window = 0);

// Causal attention of this rank's slice. q [B, Tl, Hq, D], k, v [B, Tl, Hkv, D], last dim
// contiguous, other strides free (views into a fused projection are fine). `out`
// [B, Tl, Hq, D] is assigned (allocated when undefined; may be a strided view).
// Collective over `sp`. Requires P | Hkv (every rank attends with whole KV heads),
// Hkv | Hq, part.ranks == P and Tl == part.length(rank); a violation throws before any
// communication, naming the numbers. The shape checks are identical on every rank
// except the local length, which only this rank can see.
UlyssesSaved ulysses_attention_forward(Communicator& sp, const SequencePartition& part, const Tensor& q,
                                       const Tensor& k, const Tensor& v, float scale, Tensor& out,
                                       int64_t window = 0);

// dout [B, Tl, Hq, D] -> dq, dk, dv assigned in the sequence layout (same shapes as q,
// k, v; allocated when undefined; may be strided views into one fused gradient buffer).
// Collective over the same `sp` as the forward.
void ulysses_attention_backward(Communicator& sp, const Tensor& dout, const UlyssesSaved& saved, Tensor& dq,
                                Tensor& dk, Tensor& dv);

// Throws unless an sp group of P ranks can split these heads: P | Hkv and Hkv | Hq.
// The trainer can call it at start-up; the forward calls it on every step.
void check_ulysses_heads(int P, int64_t q_heads, int64_t kv_heads);
// The sp degrees Ulysses can use with `kv_heads` KV heads per tp rank: its divisors ("1, 2, 4").
std::string ulysses_sp_degrees(int64_t kv_heads);

// Bytes rank `rank` sends to other ranks (the wire volume; what stays local is not
// counted) in one forward and one backward of Ulysses attention. Sequence -> heads
// moves Tl * (H - H/P) rows per tensor, heads -> sequence (T - Tl) * H/P, so with
// P | T every term is (P-1)/P of the local tensor: the textbook 4 * (P-1)/P * B*T/P*H*D
// per direction when Hq = Hkv = H (4Nh/P per link in DeepSpeed-Ulysses' terms).
struct UlyssesCommBytes {
  int64_t q = 0, k = 0, v = 0, out = 0;     // forward all-to-alls
  int64_t dout = 0, dq = 0, dk = 0, dv = 0;  // backward all-to-alls
  int64_t forward() const { return q + k + v + out; }
  int64_t backward() const { return dout + dq + dk + dv; }
};
UlyssesCommBytes ulysses_comm_bytes(const SequencePartition& part, int rank, int64_t batch, int64_t q_heads,
                                    int64_t kv_heads, int64_t head_dim, int64_t elem_bytes = 4);

}  // namespace anvil
