// Ulysses attention: pack, all_to_allv, attend over the full sequence, and back.
//
// The head layout is stored T-major, [T, B, h, D], because all_to_allv concatenates
// what it receives in source-rank order and the sources hold consecutive position
// ranges: the received buffer is then the whole sequence with no unpacking, and the
// kernel reads it through a transposed [B, T, h, D] view. Each exchange therefore
// copies once, on the sequence-layout side (pack before sending, unpack after).
#include "parallel/ulysses.h"

#include <cstring>
#include <string>
#include <vector>

#include "kernels/attention.h"

namespace anvil {

namespace {

// Rows of D elements between sequence-layout tensors ([B, Tl, H_i, D], any strides but the
// last) and a flat buffer [P][Tl][B][W][D], where block j holds heads [j*h_i, (j+1)*h_i) of
// each tensor i side by side (W = sum of h_i). pack: tensors -> buffer; else buffer ->
// tensors. On the host a row memcpy loop; on a GPU one strided copy per (block, tensor).
void move_rows(const std::vector<Tensor>& tensors, const std::vector<int64_t>& local_heads, int P, int64_t Tl,
               int64_t B, int64_t D, const Tensor& buffer, bool pack) {
  int64_t W = 0;
  for (int64_t h : local_heads) W += h;
  if (!buffer.device().is_cpu()) {
    const Tensor blocks = buffer.view({P, Tl, B, W, D});
    for (int j = 0; j < P; ++j) {
      int64_t at = 0;
      for (size_t i = 0; i < tensors.size(); ++i) {
        const int64_t h = local_heads[i];
        Tensor slot = blocks.select(0, j).slice(2, at, at + h);                // [Tl, B, h, D]
        Tensor rows = tensors[i].slice(2, j * h, (j + 1) * h).transpose(0, 1);  // [Tl, B, h, D]
        if (pack) slot.copy_(rows);
        else rows.copy_(slot);
        at += h;
      }
    }
    return;
  }
  const int64_t rows = static_cast<int64_t>(P) * Tl;
  const size_t elem = dtype_size(buffer.dtype()), row_bytes = static_cast<size_t>(D) * elem;
  char* const base_buffer = static_cast<char*>(buffer.raw_data());
#pragma omp parallel for schedule(static) if (rows * B * W * D >= (1 << 16))
  for (int64_t jt = 0; jt < rows; ++jt) {
    const int64_t j = jt / Tl, t = jt % Tl;
    for (int64_t b = 0; b < B; ++b) {
      char* slot = base_buffer + (jt * B + b) * W * static_cast<int64_t>(row_bytes);
      for (size_t i = 0; i < tensors.size(); ++i) {
        const Tensor& x = tensors[i];
        char* base =
            static_cast<char*>(x.raw_data()) + (b * x.stride(0) + t * x.stride(1)) * static_cast<int64_t>(elem);
        for (int64_t hh = 0; hh < local_heads[i]; ++hh, slot += row_bytes) {
          char* row = base + (j * local_heads[i] + hh) * x.stride(2) * static_cast<int64_t>(elem);
          if (pack) std::memcpy(slot, row, row_bytes);
          else std::memcpy(row, slot, row_bytes);
        }
      }
    }
  }
}

// The sequence-layout tensors of one call share q's dtype (f32 or bf16) and device.
void check_sequence_tensor(const Tensor& t, const Shape& shape, const Tensor& q, const char* op, const char* name) {
  ANVIL_CHECK(t.defined(), op, ": ", name, " is undefined");
  ANVIL_CHECK(t.device() == q.device() && t.dtype() == q.dtype(), op, ": ", name, " is ", t.describe(),
              " but q is ", q.describe(), " — every tensor of the exchange has q's dtype and device");
  ANVIL_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16, op, ": ", name, " must be f32 or bf16, got ",
              t.describe());
  ANVIL_CHECK(t.shape() == shape, op, ": ", name, " ", t.describe(), " must have shape ", shape_str(shape));
  ANVIL_CHECK(t.stride(3) == 1 || t.size(3) <= 1, op, ": the last dim of ", name, " ", t.describe(),
              " must be contiguous (stride 1), got stride ", t.stride(3));
}

// Allocates an undefined output like `like`, otherwise checks it.
void prepare_output(Tensor& t, const Shape& shape, const Tensor& like, const char* op, const char* name) {
  if (!t.defined()) t = empty_like(like, shape);
  check_sequence_tensor(t, shape, like, op, name);
}

// Element counts for an all_to_allv in which peer s's share is length(s) rows of `row`
// elements, and for the mirror side in which every peer's share is `local` rows.
std::vector<int64_t> per_peer(const SequencePartition& part, int64_t row) {
  std::vector<int64_t> counts(part.ranks);
  for (int s = 0; s < part.ranks; ++s) counts[s] = part.length(s) * row;
  return counts;
}
std::vector<int64_t> uniform(int P, int64_t count) { return std::vector<int64_t>(P, count); }

}  // namespace

UlyssesSaved ulysses_saved(const SequencePartition& part, int64_t q_heads, int64_t kv_heads, float scale, Tensor qkv,
                           Tensor out, Tensor lse, int64_t window) {
  const int P = part.ranks;
  const int64_t hq = q_heads / P, hkv = kv_heads / P, W = hq + 2 * hkv;
  ANVIL_CHECK(qkv.dim() == 4 && qkv.size(0) == part.total && qkv.size(2) == W && out.dim() == 4 && lse.dim() == 3,
              "ulysses_saved: qkv ", qkv.describe(), ", out ", out.describe(), " and lse ", lse.describe(),
              " are not the head layout of T = ", part.total, " with ", hq, " + 2 x ", hkv, " local heads");
  UlyssesSaved s;
  s.part = part;
  s.q_heads = q_heads;
  s.kv_heads = kv_heads;
  s.scale = scale;
  s.window = window;
  s.qkv = std::move(qkv);
  s.out = std::move(out);
  s.lse = std::move(lse);
  const Tensor heads = s.qkv.transpose(0, 1);  // [B, T, W, D]
  s.q = heads.slice(2, 0, hq);
  s.k = heads.slice(2, hq, hq + hkv);
  s.v = heads.slice(2, hq + hkv, W);
  return s;
}

std::string ulysses_sp_degrees(int64_t kv_heads) {
  std::string s;
  for (int64_t d = 1; d <= kv_heads; ++d)
    if (kv_heads % d == 0) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return s;
}

void check_ulysses_heads(int P, int64_t q_heads, int64_t kv_heads) {
  ANVIL_CHECK(kv_heads > 0 && q_heads % kv_heads == 0, "Ulysses attention: query heads Hq = ", q_heads,
              " must be a positive multiple of KV heads Hkv = ", kv_heads, " (grouped-query attention)");
  ANVIL_CHECK(kv_heads % P == 0, "Ulysses attention: sp = ", P,
              P > kv_heads ? " exceeds" : " does not divide", " the KV heads Hkv = ", kv_heads,
              " — each sp rank attends over the full sequence with whole KV heads (and the query heads that share "
              "them), so sp must divide Hkv (the KV heads left on each tp rank; at most Hkv). Use sp in {",
              ulysses_sp_degrees(kv_heads), "} and put the remaining ranks on dp, or lower tp so more KV heads "
              "remain per tp rank");
}

UlyssesSaved ulysses_attention_forward(Communicator& sp, const SequencePartition& part, const Tensor& q,
                                       const Tensor& k, const Tensor& v, float scale, Tensor& out,
                                       int64_t window) {
  const char* op = "ulysses_attention_forward";
  const int P = sp.size(), me = sp.rank();
  ANVIL_CHECK(q.defined() && k.defined() && q.dim() == 4 && k.dim() == 4, op,
              ": q and k must be [B, Tl, H, D], got ", q.describe(), " and ", k.describe());
  const int64_t B = q.size(0), Tl = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  check_ulysses_heads(P, Hq, Hkv);
  ANVIL_CHECK(part.ranks == P, op, ": the sequence partition is over ", part.ranks,
              " ranks but the sp communicator has ", P, " — build it with partition_sequence(T, sp)");
  ANVIL_CHECK(Tl == part.length(me), op, ": sp rank ", me, " holds ", Tl, " positions (q ", q.describe(),
              ") but the partition of T = ", part.total, " over ", P, " ranks gives it ", part.length(me),
              " (positions ", part.start(me), " .. ", part.end(me) - 1, ") — slice batches with the same partition");
  check_sequence_tensor(q, {B, Tl, Hq, D}, q, op, "q");
  check_sequence_tensor(k, {B, Tl, Hkv, D}, q, op, "k");
  check_sequence_tensor(v, {B, Tl, Hkv, D}, q, op, "v");

  const int64_t T = part.total, hq = Hq / P, hkv = Hkv / P, W = hq + 2 * hkv;

  // Sequence -> heads: q, k and v of destination j's heads travel in one message.
  Tensor send = empty_like(q, {P * Tl * B * W * D});
  move_rows({q, k, v}, {hq, hkv, hkv}, P, Tl, B, D, send, /*pack=*/true);
  Tensor qkv = empty_like(q, {T, B, W, D});
  sp.all_to_allv(send, uniform(P, Tl * B * W * D), qkv, per_peer(part, B * W * D));
  send = Tensor();

  Tensor out_heads = empty_like(q, {T, B, hq, D});
  UlyssesSaved s = ulysses_saved(part, Hq, Hkv, scale, qkv, out_heads.transpose(0, 1),
                                 empty_like(q, {B, hq, T}, DType::F32), window);
  // The whole sequence from position 0: a sliding window applies as in one process.
  kernels::attention_forward(s.q, s.k, s.v, scale, /*q_offset=*/0, s.out, s.lse, window);

  // Heads -> sequence: peer s gets its positions of my heads, a contiguous row range.
  Tensor recv = empty_like(q, {P * Tl * B * hq * D});
  sp.all_to_allv(out_heads, per_peer(part, B * hq * D), recv, uniform(P, Tl * B * hq * D));
  prepare_output(out, {B, Tl, Hq, D}, q, op, "out");
  move_rows({out}, {hq}, P, Tl, B, D, recv, /*pack=*/false);
  return s;
}

void ulysses_attention_backward(Communicator& sp, const Tensor& dout, const UlyssesSaved& s, Tensor& dq,
                                Tensor& dk, Tensor& dv) {
  const char* op = "ulysses_attention_backward";
  const int P = sp.size(), me = sp.rank();
  ANVIL_CHECK(s.qkv.defined() && s.lse.defined(), op, ": nothing saved — run ulysses_attention_forward first");
  ANVIL_CHECK(s.part.ranks == P, op, ": the forward ran over ", s.part.ranks, " sp ranks, this communicator has ", P,
              " — pass the same sp communicator to both");
  const int64_t B = s.q.size(0), T = s.part.total, D = s.q.size(3), Tl = s.part.length(me);
  const int64_t Hq = s.q_heads, Hkv = s.kv_heads, hq = Hq / P, hkv = Hkv / P, W = hq + 2 * hkv;
  check_sequence_tensor(dout, {B, Tl, Hq, D}, s.q, op, "dout");

  // Sequence -> heads for dout, the mirror of the forward's output exchange.
  Tensor send = empty_like(dout, {P * Tl * B * hq * D});
  move_rows({dout}, {hq}, P, Tl, B, D, send, /*pack=*/true);
  Tensor dout_heads = empty_like(dout, {T, B, hq, D});
  sp.all_to_allv(send, uniform(P, Tl * B * hq * D), dout_heads, per_peer(s.part, B * hq * D));
  send = Tensor();

  Tensor dqkv = empty_like(dout, {T, B, W, D});
  const Tensor grads = dqkv.transpose(0, 1);  // [B, T, W, D]
  Tensor dq_heads = grads.slice(2, 0, hq), dk_heads = grads.slice(2, hq, hq + hkv),
         dv_heads = grads.slice(2, hq + hkv, W);
  kernels::attention_backward(dout_heads.transpose(0, 1), s.q, s.k, s.v, s.out, s.lse, s.scale, /*q_offset=*/0,
                              dq_heads, dk_heads, dv_heads, s.window);
  dout_heads = Tensor();

  // Heads -> sequence for dq, dk and dv together, the mirror of the forward's q/k/v exchange.
  Tensor recv = empty_like(dout, {P * Tl * B * W * D});
  sp.all_to_allv(dqkv, per_peer(s.part, B * W * D), recv, uniform(P, Tl * B * W * D));
  prepare_output(dq, {B, Tl, Hq, D}, dout, op, "dq");
  prepare_output(dk, {B, Tl, Hkv, D}, dout, op, "dk");
  prepare_output(dv, {B, Tl, Hkv, D}, dout, op, "dv");
  move_rows({dq, dk, dv}, {hq, hkv, hkv}, P, Tl, B, D, recv, /*pack=*/false);
}

UlyssesCommBytes ulysses_comm_bytes(const SequencePartition& part, int rank, int64_t batch, int64_t q_heads,
                                    int64_t kv_heads, int64_t head_dim, int64_t elem_bytes) {
  check_ulysses_heads(part.ranks, q_heads, kv_heads);
  const int P = part.ranks;
  const int64_t Tl = part.length(rank), T = part.total, row = batch * head_dim * elem_bytes;
  // Sequence -> heads keeps my positions of my heads; heads -> sequence keeps my heads at my positions.
  const auto to_heads = [&](int64_t H) { return Tl * (H - H / P) * row; };
  const auto to_sequence = [&](int64_t H) { return (T - Tl) * (H / P) * row; };
  UlyssesCommBytes c;
  c.q = to_heads(q_heads);
  c.k = c.v = to_heads(kv_heads);
  c.out = to_sequence(q_heads);
  c.dout = to_heads(q_heads);
  c.dq = to_sequence(q_heads);
  c.dk = c.dv = to_sequence(kv_heads);
  return c;
}

}  // namespace anvil
