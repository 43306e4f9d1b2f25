// Embedding lookup and its scatter-add backward on the CPU. The backward is
// parallel over column blocks of the table: every element of dtable receives its
// contributions in position order, so the result equals the serial loop bitwise.
#include "kernels/embedding.h"

#include <algorithm>
#include <cstring>

#include "kernels/backend.h"
#include "kernels/cpu/common.h"

namespace anvil::kernels {
namespace {

// Throws naming the first id outside [0, V), its position and V.
void check_ids(const char* op, const int32_t* ids, int64_t n, int64_t V) {
  for (int64_t i = 0; i < n; ++i) {
    ANVIL_CHECK(ids[i] >= 0 && ids[i] < V, op, ": id ", ids[i], " at position ", i, " is outside the table [0, ",
                V, ") (V = ", V, ") — check the tokenizer's vocabulary size against the model's");
  }
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  ANVIL_DISPATCH_CUDA(table, embedding_forward, ids, table, out);
  constexpr const char* op = "embedding_forward";
  const int32_t* pid = cpu::contiguous_i32(op, "ids", ids);
  const cpu::Rows vt = cpu::as_rows(op, "table", table), vo = cpu::as_rows(op, "out", out);
  ANVIL_CHECK(table.dim() == 2, op, ": table has shape ", shape_str(table.shape()), " but must be [V, C]");
  const int64_t N = ids.numel(), V = vt.rows, C = vt.cols;
  ANVIL_CHECK(vo.cols == C && vo.rows == N, op, ": out has shape ", shape_str(out.shape()), " but ids ",
              shape_str(ids.shape()), " and table ", shape_str(table.shape()), " give [", N, ", ", C, "]");
  check_ids(op, pid, N, V);
  cpu::parallel_rows(N, C, [&](int64_t i) {
    std::memcpy(vo.row(i), vt.row(pid[i]), static_cast<size_t>(C) * sizeof(float));
  });
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  ANVIL_DISPATCH_CUDA(dtable, embedding_backward, ids, dout, dtable);
  constexpr const char* op = "embedding_backward";
  const int32_t* pid = cpu::contiguous_i32(op, "ids", ids);
  const cpu::Rows vd = cpu::as_rows(op, "dout", dout), vt = cpu::as_rows(op, "dtable", dtable);
  ANVIL_CHECK(dtable.dim() == 2, op, ": dtable has shape ", shape_str(dtable.shape()), " but must be [V, C]");
  const int64_t N = ids.numel(), V = vt.rows, C = vt.cols;
  ANVIL_CHECK(vd.cols == C && vd.rows == N, op, ": dout has shape ", shape_str(dout.shape()), " but ids ",
              shape_str(ids.shape()), " and dtable ", shape_str(dtable.shape()), " need [", N, ", ", C, "]");
  check_ids(op, pid, N, V);
  constexpr int64_t kBlock = 64;  // one 256-byte strip of each row per task
  const int64_t nblocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (N * C >= cpu::kParallelMin && nblocks > 1)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t j0 = b * kBlock, j1 = std::min(C, j0 + kBlock);
    for (int64_t i = 0; i < N; ++i) {
      const float* src = vd.row(i);
      float* dst = vt.row(pid[i]);
      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
    }
  }
}

void embedding_shard_forward(const Tensor& ids, const Tensor& table_shard, int64_t vocab_start, Tensor& out) {
  ANVIL_DISPATCH_CUDA(table_shard, embedding_shard_forward, ids, table_shard, vocab_start, out);
  constexpr const char* op = "embedding_shard_forward";
  const int32_t* pid = cpu::contiguous_i32(op, "ids", ids);
  const cpu::Rows vt = cpu::as_rows(op, "table_shard", table_shard), vo = cpu::as_rows(op, "out", out);
  const int64_t N = ids.numel(), V = vt.rows, C = vt.cols;
  ANVIL_CHECK(table_shard.dim() == 2 && vo.cols == C && vo.rows == N, op, ": out has shape ", shape_str(out.shape()),
              " but ids ", shape_str(ids.shape()), " and table_shard ", shape_str(table_shard.shape()), " give [", N,
              ", ", C, "]");
  cpu::parallel_rows(N, C, [&](int64_t i) {
    const int64_t local = static_cast<int64_t>(pid[i]) - vocab_start;
    if (local >= 0 && local < V) std::memcpy(vo.row(i), vt.row(local), static_cast<size_t>(C) * sizeof(float));
    else std::memset(vo.row(i), 0, static_cast<size_t>(C) * sizeof(float));
  });
}

void embedding_shard_backward(const Tensor& ids, const Tensor& dout, int64_t vocab_start, Tensor& dtable_shard) {
  ANVIL_DISPATCH_CUDA(dtable_shard, embedding_shard_backward, ids, dout, vocab_start, dtable_shard);
  constexpr const char* op = "embedding_shard_backward";
  const int32_t* pid = cpu::contiguous_i32(op, "ids", ids);
  const cpu::Rows vd = cpu::as_rows(op, "dout", dout), vt = cpu::as_rows(op, "dtable_shard", dtable_shard);
  const int64_t N = ids.numel(), V = vt.rows, C = vt.cols;
  ANVIL_CHECK(dtable_shard.dim() == 2 && vd.cols == C && vd.rows == N, op, ": dout has shape ",
              shape_str(dout.shape()), " but ids ", shape_str(ids.shape()), " and dtable_shard ",
              shape_str(dtable_shard.shape()), " need [", N, ", ", C, "]");
  constexpr int64_t kBlock = 64;  // as embedding_backward: column strips, rows in position order
  const int64_t nblocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (N * C >= cpu::kParallelMin && nblocks > 1)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t j0 = b * kBlock, j1 = std::min(C, j0 + kBlock);
    for (int64_t i = 0; i < N; ++i) {
      const int64_t local = static_cast<int64_t>(pid[i]) - vocab_start;
      if (local < 0 || local >= V) continue;
      const float* src = vd.row(i);
      float* dst = vt.row(local);
      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
    }
  }
}

}  // namespace anvil::kernels
