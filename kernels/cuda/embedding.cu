// Embedding lookup and its scatter-add backward on CUDA (kernels/embedding.h).
//
// Forward: one block per token row copies the table row (16-byte units when aligned).
// Ids outside the table set a device flag (the first bad position, atomicMin on an
// integer) that the host reads back after the kernel — one small sync — to throw the same
// Error as the CPU backend.
//
// Backward, deterministic without float atomics: the token positions are sorted by id with
// CUB's radix sort, which is stable, so equal ids keep their positions in ascending order;
// then the block that finds the head of a run of equal ids adds those rows into the
// table row one after another, in position order — the CPU's order, so an f32 dout gives
// the CPU's bits. A run is summed by one block, so one very frequent id serialises its
// rows; the sort costs O(N) and no [V]-sized pass is ever made.
#include <cub/device/device_radix_sort.cuh>

#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace anvil::kernels::cuda {
namespace {

constexpr unsigned long long kNoBadId = ULLONG_MAX;

// An id's row in a table holding ids [vocab_start, vocab_start + V), or -1 outside it.
__device__ __forceinline__ int64_t local_row(int32_t id, int64_t vocab_start, int64_t V) {
  const int64_t local = static_cast<int64_t>(id) - vocab_start;
  return local >= 0 && local < V ? local : -1;
}

// out[i, :] = table[ids[i] - vocab_start, :], zeros outside the table. Rows are counted in
// units U (16 bytes, or one element), ld in units too. first_bad (full-table lookups only)
// receives the first position whose id is outside.
template <class U>
__global__ void gather_rows_kernel(const int32_t* ids, int64_t N, const U* table, int64_t table_ld, int64_t V,
                                   int64_t vocab_start, U* out, int64_t out_ld, int64_t units,
                                   unsigned long long* first_bad) {
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int64_t row = local_row(ids[i], vocab_start, V);
    if (row < 0 && first_bad && threadIdx.x == 0) atomicMin(first_bad, static_cast<unsigned long long>(i));
    U* dst = out + i * out_ld;
    const U* src = table + (row < 0 ? 0 : row) * table_ld;
    for (int64_t j = threadIdx.x; j < units; j += blockDim.x) dst[j] = row < 0 ? U{} : src[j];
  }
}

// keys[i] = the id's local row (V outside the table, sorted last and skipped), pos[i] = i.
__global__ void sort_keys_kernel(const int32_t* ids, int64_t N, int64_t V, int64_t vocab_start, uint32_t* keys,
                                 int32_t* pos, unsigned long long* first_bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = local_row(ids[i], vocab_start, V);
    if (row < 0 && first_bad) atomicMin(first_bad, static_cast<unsigned long long>(i));
    keys[i] = static_cast<uint32_t>(row < 0 ? V : row);
    pos[i] = static_cast<int32_t>(i);
  }
}

// For each run of equal keys in the sorted order (found by its head k), dtable[key, :] +=
// dout[pos[k], :], dout[pos[k + 1], :], ... in that order.
template <class E>
__global__ void scatter_runs_kernel(const uint32_t* keys, const int32_t* pos, int64_t N, uint32_t skip_key,
                                    const E* dout, int64_t dout_ld, float* dtable, int64_t dtable_ld, int64_t C) {
  for (int64_t k = blockIdx.x; k < N; k += gridDim.x) {
    const uint32_t key = keys[k];
    if (key == skip_key || (k > 0 && keys[k - 1] == key)) continue;  // uniform over the block
    float* dst = dtable + static_cast<int64_t>(key) * dtable_ld;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
      float acc = dst[j];
      for (int64_t s = k; s < N && keys[s] == key; ++s) acc += to_f32(dout[static_cast<int64_t>(pos[s]) * dout_ld + j]);
      dst[j] = acc;
    }
  }
}

// Throws the CPU backend's message for the first id outside [0, V), if the flag has one.
void throw_if_bad_id(const OpContext& ctx, const unsigned long long* flag, const int32_t* ids, int64_t V) {
  unsigned long long first = kNoBadId;
  ctx.read_back(&first, flag, sizeof first);
  if (first == kNoBadId) return;
  int32_t id = 0;
  ctx.read_back(&id, ids + first, sizeof id);
  ANVIL_FAIL(ctx.op(), ": id ", id, " at position ", first, " is outside the table [0, ", V, ") (V = ", V,
             ") — check the tokenizer's vocabulary size against the model's");
}

// A zeroed-to-"no bad id" flag on the device, or none (shard lookups do not check ids).
Tensor bad_id_flag(const OpContext& ctx, bool check) {
  if (!check) return Tensor();
  Tensor flag = ctx.scratch(1, DType::I64);
  ANVIL_CUDA_CHECK(cudaMemsetAsync(flag.raw_data(), 0xff, sizeof(unsigned long long), ctx.stream()));
  return flag;
}

unsigned long long* flag_ptr(const Tensor& flag) {
  return flag.defined() ? static_cast<unsigned long long*>(flag.raw_data()) : nullptr;
}

void gather(const OpContext& ctx, const Tensor& ids, const Tensor& table, const char* table_name,
            int64_t vocab_start, Tensor& out, bool check) {
  const int32_t* pid = ctx.contiguous_i32("ids", ids);
  const Rows vt = ctx.rows(table_name, table), vo = ctx.rows("out", out, table.dtype());
  ANVIL_CHECK(table.dim() == 2, ctx.op(), ": ", table_name, " has shape ", shape_str(table.shape()),
              " but must be [V, C]");
  const int64_t N = ids.numel(), V = vt.rows, C = vt.cols;
  ANVIL_CHECK(vo.cols == C && vo.rows == N, ctx.op(), ": out has shape ", shape_str(out.shape()), " but ids ",
              shape_str(ids.shape()), " and ", table_name, " ", shape_str(table.shape()), " give [", N, ", ", C,
              "]");
  if (N == 0) return;
  Tensor flag = bad_id_flag(ctx, check);
  const size_t es = dtype_size(vt.dtype), row_bytes = static_cast<size_t>(C) * es;
  const bool vec = row_bytes % 16 == 0 && aligned16(vt.p) && aligned16(vo.p) && (vt.ld * es) % 16 == 0 &&
                   (vo.ld * es) % 16 == 0;
  auto launch = [&](auto unit) {
    using U = decltype(unit);
    const int64_t per = static_cast<int64_t>(sizeof(U) / es);  // elements per unit
    const int64_t units = C / per;
    gather_rows_kernel<U><<<blocks_for(N, 1), threads_for(units, 1, kThreads), 0, ctx.stream()>>>(
        pid, N, static_cast<const U*>(vt.p), vt.ld / per, V, vocab_start, static_cast<U*>(vo.p), vo.ld / per, units,
        flag_ptr(flag));
    ANVIL_CUDA_CHECK_LAUNCH();
  };
  if (vec) launch(int4{});
  else if (es == 4) launch(uint32_t{});
  else launch(uint16_t{});
  if (check) throw_if_bad_id(ctx, flag_ptr(flag), pid, V);
}

void scatter_add(const OpContext& ctx, const Tensor& ids, const Tensor& dout, int64_t vocab_start, Tensor& dtable,
                 const char* dtable_name, bool check) {
  const int32_t* pid = ctx.contiguous_i32("ids", ids);
  const Rows vd = ctx.rows("dout", dout), vt = ctx.rows(dtable_name, dtable, DType::F32);
  const int64_t N = ids.numel(), V = vt.rows, C = vt.cols;
  ANVIL_CHECK(dtable.dim() == 2 && vd.cols == C && vd.rows == N, ctx.op(), ": dout has shape ",
              shape_str(dout.shape()), " but ids ", shape_str(ids.shape()), " and ", dtable_name, " ",
              shape_str(dtable.shape()), " need [", N, ", ", C, "]");
  ANVIL_CHECK(N <= INT32_MAX && V < UINT32_MAX, ctx.op(), ": ", N, " ids into ", V,
              " rows exceed the 32-bit sort keys — split the batch");
  if (N == 0) return;
  Tensor flag = bad_id_flag(ctx, check);
  // keys, sorted keys, positions, sorted positions: 4 x N 32-bit words.
  Tensor buf = ctx.scratch(4 * N, DType::I32);
  uint32_t* keys = static_cast<uint32_t*>(buf.raw_data());
  uint32_t* keys_sorted = keys + N;
  int32_t* pos = reinterpret_cast<int32_t*>(keys_sorted + N);
  int32_t* pos_sorted = pos + N;
  sort_keys_kernel<<<blocks_for(N, kThreads), kThreads, 0, ctx.stream()>>>(pid, N, V, vocab_start, keys, pos,
                                                                            flag_ptr(flag));
  ANVIL_CUDA_CHECK_LAUNCH();
  if (check) throw_if_bad_id(ctx, flag_ptr(flag), pid, V);  // before dtable is touched, as on the CPU

  int end_bit = 1;  // keys go up to V (the skip key)
  while (end_bit < 32 && (int64_t{1} << end_bit) <= V) ++end_bit;
  const int n = static_cast<int>(N);
  size_t temp_bytes = 0;
  ANVIL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, keys_sorted, pos, pos_sorted, n, 0,
                                                   end_bit, ctx.stream()));
  Tensor temp = ctx.scratch(static_cast<int64_t>(temp_bytes) + 1, DType::U8);
  ANVIL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw_data(), temp_bytes, keys, keys_sorted, pos, pos_sorted,
                                                   n, 0, end_bit, ctx.stream()));
  with_float_type(vd.dtype, [&](auto tag) {
    using E = decltype(tag);
    scatter_runs_kernel<E><<<blocks_for(N, 1), threads_for(C, 1, kThreads), 0, ctx.stream()>>>(
        keys_sorted, pos_sorted, N, static_cast<uint32_t>(V), static_cast<const E*>(vd.p), vd.ld,
        static_cast<float*>(vt.p), vt.ld, C);
    ANVIL_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  OpContext ctx("embedding_forward", "table", table);
  gather(ctx, ids, table, "table", 0, out, true);
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  OpContext ctx("embedding_backward", "dtable", dtable);
  scatter_add(ctx, ids, dout, 0, dtable, "dtable", true);
}

void embedding_shard_forward(const Tensor& ids, const Tensor& table_shard, int64_t vocab_start, Tensor& out) {
  OpContext ctx("embedding_shard_forward", "table_shard", table_shard);
  gather(ctx, ids, table_shard, "table_shard", vocab_start, out, false);
}

void embedding_shard_backward(const Tensor& ids, const Tensor& dout, int64_t vocab_start, Tensor& dtable_shard) {
  OpContext ctx("embedding_shard_backward", "dtable_shard", dtable_shard);
  scatter_add(ctx, ids, dout, vocab_start, dtable_shard, "dtable_shard", false);
}

}  // namespace anvil::kernels::cuda
