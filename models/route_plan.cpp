#include "models/route_plan.h"

#include <algorithm>

#include "kernels/route_rows.h"

namespace anvil {

RoutePlan plan_routes(const Tensor& g, bool per_sequence, Device device) {
  ANVIL_CHECK(g.device().is_cpu() && g.dtype() == DType::F32 && g.dim() == 2,
              "plan_routes: the gates must be host f32 [B, T], got ", g.describe());
  const Tensor gc = g.contiguous();
  const float* pg = gc.data<float>();
  RoutePlan plan;
  plan.batch = g.size(0);
  plan.seq_len = g.size(1);
  const int64_t B = plan.batch, T = plan.seq_len;
  std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      if (pg[b * T + t] != 0.0f) tokens[static_cast<size_t>(b)].push_back(static_cast<int32_t>(b * T + t));
  for (const auto& row : tokens) plan.active += static_cast<int64_t>(row.size());
  if (!per_sequence) {
    plan.rows = plan.active ? 1 : 0;
    plan.cols = plan.active;
    for (const auto& row : tokens) plan.index.insert(plan.index.end(), row.begin(), row.end());
  } else {
    for (const auto& row : tokens) {
      if (row.empty()) continue;
      ++plan.rows;
      plan.cols = std::max<int64_t>(plan.cols, static_cast<int64_t>(row.size()));
    }
    for (const auto& row : tokens) {
      if (row.empty()) continue;
      plan.index.insert(plan.index.end(), row.begin(), row.end());
      plan.index.insert(plan.index.end(), static_cast<size_t>(plan.cols) - row.size(), -1);
    }
  }
  if (!plan.none())
    plan.device_index =
        Tensor::from_vector(plan.index, {static_cast<int64_t>(plan.index.size())}).to(device);
  return plan;
}

Tensor gather_active(const RoutePlan& plan, const Tensor& full) {
  const int64_t C = full.size(-1);
  Tensor out = empty_like(full, {plan.rows, plan.cols, C});
  Tensor out2 = out.view({plan.rows * plan.cols, C});
  kernels::gather_rows(full.contiguous().view({plan.batch * plan.seq_len, C}), plan.device_index, out2);
  return out;
}

void scatter_active(const RoutePlan& plan, const Tensor& compact, Tensor& full) {
  const int64_t C = full.size(-1);
  Tensor full2 = full.view({plan.batch * plan.seq_len, C});
  kernels::scatter_add_rows(compact.contiguous().view({plan.rows * plan.cols, C}), plan.device_index, full2);
}

std::vector<float> scatter_values(const RoutePlan& plan, const float* per_slot) {
  std::vector<float> out(static_cast<size_t>(plan.batch * plan.seq_len), 0.0f);
  for (size_t i = 0; i < plan.index.size(); ++i)
    if (plan.index[i] >= 0) out[static_cast<size_t>(plan.index[i])] = per_slot[i];
  return out;
}

Tensor compact_positions(const RoutePlan& plan, const Tensor& positions) {
  const Tensor pc = positions.to(Device::cpu()).contiguous();
  const int32_t* pp = pc.data<int32_t>();
  Tensor out = Tensor::empty({plan.rows, plan.cols}, DType::I32);
  int32_t* po = out.data<int32_t>();
  for (size_t i = 0; i < plan.index.size(); ++i) po[i] = plan.index[i] >= 0 ? pp[plan.index[i]] : 0;
  return out;
}

std::shared_ptr<StepContext> compact_context(const RoutePlan& plan, const StepContext& ctx, Device device) {
  ANVIL_CHECK(!ctx.mask.has_groups(), "layer-skip routers: drafting groups (StepContext mask.group_ids) are not "
              "supported with routed attention — train ParallelSpec drafters without routers");
  auto sub = std::make_shared<StepContext>(ctx);
  const int64_t B = plan.batch, T = plan.seq_len;
  const bool whole_rows = plan.cols == T;  // every compact row is one whole sequence
  if (ctx.position_ids.defined() || !whole_rows) {
    Tensor full = ctx.position_ids.defined() ? ctx.position_ids : Tensor::empty({B, T}, DType::I32);
    if (!ctx.position_ids.defined())
      for (int64_t i = 0; i < B * T; ++i) full.data<int32_t>()[i] = static_cast<int32_t>(i % T);
    sub->position_ids = compact_positions(plan, full).to(device);
  }
  if (ctx.mask.has_documents()) {
    // Padding continues its row's last document (ids must not decrease; causality hides it).
    Tensor seg = compact_positions(plan, ctx.mask.segment_ids);
    int32_t* ps = seg.data<int32_t>();
    for (int64_t r = 0; r < plan.rows; ++r)
      for (int64_t t = 1; t < plan.cols; ++t)
        if (plan.index[static_cast<size_t>(r * plan.cols + t)] < 0) ps[r * plan.cols + t] = ps[r * plan.cols + t - 1];
    sub->mask.segment_ids = seg.to(device);
  }
  return sub;
}

}  // namespace anvil
