// kernels/attention with drafting groups (AttentionMask::group_ids) on CUDA against the CPU
// backend on the same inputs, forward and backward, f32 and bf16: rows of real tokens followed
// by the [MASK] blocks of several anchors, across the kernels' tiles, with GQA, windows,
// documents and decoding offsets. Group masks are never sent to cuDNN (checked with its run
// counters), even in shapes it would take otherwise. Error measure and base tolerances:
// tests/support/gpu_check.h; the bf16 ones are those of tests/gpu/attention_gpu_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <ostream>
#include <string>

#include "kernels/attention.h"
#include "kernels/cuda/attention_internal.h"
#include "tests/spec/group_layout.h"
#include "tests/support/gpu_check.h"

using namespace anvil;
using namespace anvil::testing;

namespace {

struct GroupGpuCase {
  const char* name;
  int64_t Tq, Hq, Hkv, D;
  DType dtype;
  int64_t window;
  std::vector<std::vector<GroupRun>> rows;
  bool documents = false;  // each run of a row is a document of its own
};

Tensor groups_of(const GroupGpuCase& c) {
  std::vector<std::vector<int32_t>> rows;
  for (const auto& runs : c.rows) rows.push_back(group_row(runs));
  return i32_rows(rows);
}

Tensor segments_of(const GroupGpuCase& c) {
  if (!c.documents) return Tensor();
  std::vector<std::vector<int32_t>> rows;
  for (const auto& runs : c.rows) {
    rows.emplace_back();
    for (size_t r = 0; r < runs.size(); ++r)
      rows.back().insert(rows.back().end(), group_row({runs[r]}).size(), static_cast<int32_t>(r));
  }
  return i32_rows(rows);
}

Tensor nan_tensor(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype, gpu());
  t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

void PrintTo(const GroupGpuCase& c, std::ostream* os) { *os << c.name; }

class GroupAttentionGpu : public ::testing::TestWithParam<GroupGpuCase> {};

TEST_P(GroupAttentionGpu, ForwardAndBackwardMatchCpu) {
  const GroupGpuCase& c = GetParam();
  const Tensor groups = groups_of(c), seg = segments_of(c);
  const int64_t B = groups.size(0), Tk = groups.size(1), q_offset = Tk - c.Tq;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  const bool bf16 = c.dtype == DType::BF16;
  const kernels::AttentionMask mask_cpu{c.window, seg, groups};
  const kernels::AttentionMask mask_gpu{c.window, seg.defined() ? seg.to(gpu()) : Tensor(), groups.to(gpu())};
  const auto before = kernels::cuda::detail::cudnn_attention_runs();

  const Tensor q = reference_input(random_tensor({B, c.Tq, c.Hq, c.D}, 41, -2, 2), c.dtype);
  const Tensor k = reference_input(random_tensor({B, Tk, c.Hkv, c.D}, 42, -2, 2), c.dtype);
  const Tensor v = reference_input(random_tensor({B, Tk, c.Hkv, c.D}, 43), c.dtype);
  const Tensor dout = reference_input(random_tensor({B, c.Tq, c.Hq, c.D}, 44), c.dtype);
  Tensor out_cpu, lse_cpu;
  kernels::attention_forward(q, k, v, scale, q_offset, out_cpu, lse_cpu, mask_cpu);
  const Tensor gq = gpu_operand(q, c.dtype), gk = gpu_operand(k, c.dtype), gv = gpu_operand(v, c.dtype);
  Tensor out_gpu = nan_tensor(q.shape(), c.dtype), lse_gpu = nan_tensor({B, c.Hq, c.Tq}, DType::F32);
  kernels::attention_forward(gq, gk, gv, scale, q_offset, out_gpu, lse_gpu, mask_gpu);
  EXPECT_GPU_NEAR(out_gpu, out_cpu, bf16 ? 3 * kBf16Rounding : kF32Tol, "out");
  EXPECT_GPU_NEAR(lse_gpu, lse_cpu, bf16 ? 1e-4 : kF32Tol, "lse");

  // Backward, both sides from the GPU's out and lse (it measures the backward alone).
  const Tensor out_ref = host_f32(out_gpu), lse_ref = lse_gpu.to(Device::cpu());
  Tensor dq_cpu, dk_cpu, dv_cpu;
  kernels::attention_backward(dout, q, k, v, out_ref, lse_ref, scale, q_offset, dq_cpu, dk_cpu, dv_cpu, mask_cpu);
  Tensor dq_gpu = nan_tensor(q.shape(), c.dtype), dk_gpu = nan_tensor(k.shape(), c.dtype);
  Tensor dv_gpu = nan_tensor(v.shape(), c.dtype);
  kernels::attention_backward(gpu_operand(dout, c.dtype), gq, gk, gv, out_gpu, lse_gpu, scale, q_offset, dq_gpu,
                              dk_gpu, dv_gpu, mask_gpu);
  const double grad_tol = bf16 ? 4 * kBf16Rounding : kF32Tol;
  EXPECT_GPU_NEAR(dq_gpu, dq_cpu, grad_tol, "dq");
  EXPECT_GPU_NEAR(dk_gpu, dk_cpu, grad_tol, "dk");
  EXPECT_GPU_NEAR(dv_gpu, dv_cpu, grad_tol, "dv");

  const auto after = kernels::cuda::detail::cudnn_attention_runs();
  EXPECT_EQ(after.forward, before.forward) << "a group mask went to cuDNN, which cannot express it";
  EXPECT_EQ(after.backward, before.backward) << "a group mask went to cuDNN, which cannot express it";
}

constexpr DType F32 = DType::F32, BF16 = DType::BF16;

// 80 real tokens then 6 anchors x 20 masks, and 110 real then 3 x 30 (200 slots each).
const std::vector<std::vector<GroupRun>> kLongRows{{{80, {0, 10, 40, 63, 64, 79}, 20}},
                                                    {{110, {5, 100, 109}, 30}}};
const std::vector<std::vector<GroupRun>> kDocRows{{{40, {0, 39}, 12}, {30, {67, 93}, 18}},
                                                   {{100, {50, 99}, 15}, {0, {}, 0}}};

const GroupGpuCase kCases[] = {
    {"f32_anchor_first_token", 11, 2, 1, 8, F32, 0, {{{5, {0, 2}, 3}}}},
    {"f32_long_gqa", 200, 4, 2, 32, F32, 0, kLongRows},
    {"f32_window_decode_offset", 70, 4, 1, 20, F32, 30, kLongRows},
    {"f32_documents", 130, 4, 1, 16, F32, 0, kDocRows, true},
    {"bf16_d64_long_gqa", 200, 8, 2, 64, BF16, 0, kLongRows},  // a shape cuDNN would take without groups
    {"bf16_d128_documents_window", 130, 4, 4, 128, BF16, 25, kDocRows, true},
    {"bf16_d36_decode_offset", 40, 4, 2, 36, BF16, 0, kLongRows},
};

INSTANTIATE_TEST_SUITE_P(Cases, GroupAttentionGpu, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<GroupGpuCase>& i) { return std::string(i.param.name); });

}  // namespace
