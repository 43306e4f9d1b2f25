#include "models/step_context.h"

#include <algorithm>

namespace anvil {

std::vector<AuxLoss> StepContext::take_aux_losses() {
  std::vector<AuxLoss> out;
  out.swap(aux_losses_);
  return out;
}

float StepContext::weighted_aux_loss() const {
  float total = 0.0f;
  for (const AuxLoss& l : aux_losses_) total += l.weight * l.value;
  return total;
}

void StepContext::to(Device device) {
  if (position_ids.defined()) position_ids = position_ids.to(device);
  if (mask.segment_ids.defined()) mask.segment_ids = mask.segment_ids.to(device);
  if (mask.group_ids.defined()) mask.group_ids = mask.group_ids.to(device);
}

namespace {
void check_segments_row_order(const Tensor& seg, const char* where) {
  const int64_t B = seg.size(0), T = seg.size(1);
  const int32_t* s = seg.data<int32_t>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 1; t < T; ++t)
      ANVIL_CHECK(s[b * T + t] >= s[b * T + t - 1], where, ": segment_ids of row ", b, " decrease at slot ", t, " (",
                  s[b * T + t - 1], " then ", s[b * T + t],
                  ") — documents must be contiguous runs with non-decreasing ids");
}

Tensor host_i32(const Tensor& t, const Shape& shape, const char* name, const char* where) {
  ANVIL_CHECK(t.dtype() == DType::I32 && t.shape() == shape, where, ": ", name, " must be i32 ", shape_str(shape),
              " (one per token of the micro-batch), got ", t.describe());
  return t.device().is_cpu() ? t.contiguous() : t.to(Device::cpu()).contiguous();
}
}  // namespace

Tensor positions_from_segments(const Tensor& segment_ids) {
  ANVIL_CHECK(segment_ids.dim() == 2, "positions_from_segments: segment_ids must be i32 [B, T], got ",
              segment_ids.describe());
  const Tensor seg = host_i32(segment_ids, segment_ids.shape(), "segment_ids", "positions_from_segments");
  check_segments_row_order(seg, "positions_from_segments");
  const int64_t B = seg.size(0), T = seg.size(1);
  Tensor pos = Tensor::empty({B, T}, DType::I32);
  const int32_t* s = seg.data<int32_t>();
  int32_t* p = pos.data<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t start = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (t > 0 && s[b * T + t] != s[b * T + t - 1]) start = t;
      p[b * T + t] = static_cast<int32_t>(t - start);
    }
  }
  return pos;
}

Tensor positions_from_groups(const Tensor& group_ids, const Tensor& segment_ids) {
  const char* op = "positions_from_groups";
  ANVIL_CHECK(group_ids.dim() == 2, op, ": group_ids must be i32 [B, T], got ", group_ids.describe());
  const int64_t B = group_ids.size(0), T = group_ids.size(1);
  const Tensor groups = host_i32(group_ids, {B, T}, "group_ids", op);
  kernels::check_group_ids(groups, B, T, op);
  Tensor seg;
  if (segment_ids.defined()) {
    seg = host_i32(segment_ids, {B, T}, "segment_ids", op);
    check_segments_row_order(seg, op);
  }
  Tensor pos = Tensor::empty({B, T}, DType::I32);
  const int32_t* g = groups.data<int32_t>();
  int32_t* p = pos.data<int32_t>();
  std::vector<int32_t> masks_seen(static_cast<size_t>(T));  // per anchor slot, masks so far
  for (int64_t b = 0; b < B; ++b) {
    std::fill(masks_seen.begin(), masks_seen.end(), 0);
    int32_t real = 0;  // real tokens so far in the current document
    for (int64_t t = 0; t < T; ++t) {
      const int64_t i = b * T + t;
      if (seg.defined() && t > 0 && seg.data<int32_t>()[i] != seg.data<int32_t>()[i - 1]) real = 0;
      if (g[i] < 0) p[i] = real++;
      else p[i] = p[b * T + g[i]] + 1 + masks_seen[static_cast<size_t>(g[i])]++;
    }
  }
  return pos;
}

void check_step_context(const StepContext& ctx, int64_t B, int64_t T, int64_t max_positions, const char* where) {
  if (ctx.position_ids.defined()) {
    const Tensor pos = host_i32(ctx.position_ids, {B, T}, "position_ids", where);
    const int32_t* p = pos.data<int32_t>();
    for (int64_t i = 0; i < B * T; ++i)
      ANVIL_CHECK(p[i] >= 0 && p[i] < max_positions, where, ": position id ", p[i], " of row ", i / T, " token ",
                  i % T, " is outside [0, ", max_positions, ") — the model has max_position_embeddings = ",
                  max_positions);
  }
  if (ctx.mask.segment_ids.defined())
    check_segments_row_order(host_i32(ctx.mask.segment_ids, {B, T}, "segment_ids", where), where);
  if (ctx.mask.group_ids.defined())
    kernels::check_group_ids(host_i32(ctx.mask.group_ids, {B, T}, "group_ids", where), B, T, where);
}

}  // namespace anvil
