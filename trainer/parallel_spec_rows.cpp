// ParallelSpec's group-wise training rows (see trainer/parallel_spec_rows.h).
#include "trainer/parallel_spec_rows.h"

#include <algorithm>
#include <filesystem>

#include "models/step_context.h"
#include "trainer/checkpoint.h"
#include "trainer/load_model.h"

namespace anvil {

int64_t parallel_spec_masks(const RunConfig& config) {
  return config.task.name == "distill" && config.distill.drafter == "parallelspec" ? config.distill.parallel_tokens : 0;
}

void add_parallel_spec_masks(TransformerLM& drafter, const RunConfig& config) {
  const int64_t masks = parallel_spec_masks(config);
  drafter.add_mask_embeddings(masks, static_cast<uint64_t>(config.run.seed));
  const std::string& from = config.model.init_from;
  std::error_code ec;
  if (from.empty() || drafter.mask_tokens() == 0 ||
      !std::filesystem::is_regular_file(std::filesystem::path(from) / kCheckpointFile, ec))
    return;
  if (parallel_spec_masks(config_from_checkpoint(from)) != masks) return;  // a plain LM (or other k): fresh masks
  CheckpointContents contents;
  contents.params = checkpoint_tensors({&drafter.param(kMaskEmbeddingName)});
  load_checkpoint(from, contents);
}

int64_t parallel_spec_anchor_count(int64_t n, int64_t masks, int64_t requested, int64_t max_positions) {
  const int64_t fit = std::min(n - 1, (max_positions - n) / masks);
  ANVIL_CHECK(n >= 2 && fit >= 1, "distill.drafter parallelspec: a row holds data.seq_len = ", n, " real tokens plus ",
              masks, " masks per anchor, but the drafter has max_position_embeddings = ", max_positions,
              " slots — not one anchor fits; lower data.seq_len to at most ", max_positions - masks,
              " (e.g. half the positions, leaving the rest to the masks)");
  if (requested == 0) return fit;
  ANVIL_CHECK(requested <= fit, "distill.anchors_per_sequence = ", requested, " anchors of ", masks,
              " masks do not fit: data.seq_len = ", n, " real tokens leave room for ", fit,
              " within max_position_embeddings = ", max_positions, " — lower anchors_per_sequence to <= ", fit,
              " (or 0 = as many as fit) or lower data.seq_len");
  return requested;
}

int64_t parallel_spec_anchor(int64_t j, int64_t a, int64_t n, int64_t offset) { return (j * (n - 1) + offset) / a; }

int64_t parallel_spec_offset(const int32_t* ids, int64_t n) {
  uint64_t h = 14695981039346656037ull;
  for (int64_t j = 0; j < n; ++j) h = (h ^ static_cast<uint32_t>(ids[j])) * 1099511628211ull;
  return n > 1 ? static_cast<int64_t>(h % static_cast<uint64_t>(n - 1)) : 0;
}

ParallelSpecRows parallel_spec_rows(const Batch& window, int64_t masks, int64_t anchors, int32_t first_mask_id,
                                    int32_t ignore_index, bool shifted) {
  ANVIL_CHECK(!window.segment_ids.defined(), "distill.drafter parallelspec: packed documents are not supported — "
              "set data.packing: none");
  ANVIL_CHECK(window.ids.dim() == 2 && window.targets.shape() == window.ids.shape() && !window.ids.device().is_cuda(),
              "parallel_spec_rows: the window's ids and targets must be host i32 [B, n], got ", window.ids.describe(),
              " and ", window.targets.describe());
  const int64_t B = window.ids.size(0), n = window.ids.size(1), T = n + anchors * masks;
  const Tensor ids = window.ids.contiguous(), targets = window.targets.contiguous();
  ParallelSpecRows out;
  out.drafter.ids = Tensor::empty({B, T}, DType::I32);
  out.drafter.targets = Tensor::empty({B, T}, DType::I32);
  out.group_ids = Tensor::empty({B, T}, DType::I32);
  out.teacher_slots = Tensor::empty({B * T}, DType::I32);
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* x = ids.data<int32_t>() + b * n;
    const int32_t* y = targets.data<int32_t>() + b * n;
    int32_t* row = out.drafter.ids.data<int32_t>() + b * T;
    int32_t* label = out.drafter.targets.data<int32_t>() + b * T;
    int32_t* group = out.group_ids.data<int32_t>() + b * T;
    int32_t* teacher = out.teacher_slots.data<int32_t>() + b * T;
    for (int64_t j = 0; j < n; ++j) {
      row[j] = x[j], label[j] = y[j], group[j] = -1;
      teacher[j] = static_cast<int32_t>(b * n + j);
    }
    const int64_t offset = shifted ? parallel_spec_offset(x, n) : 0;
    for (int64_t a = 0; a < anchors; ++a) {
      const int64_t t = parallel_spec_anchor(a, anchors, n, offset);
      for (int64_t i = 1; i <= masks; ++i) {
        const int64_t slot = n + a * masks + (i - 1), source = t + i;  // mask i drafts targets[t + i]
        row[slot] = first_mask_id + static_cast<int32_t>(i - 1);
        group[slot] = static_cast<int32_t>(t);
        label[slot] = source < n ? y[source] : ignore_index;
        teacher[slot] = static_cast<int32_t>(b * n + std::min(source, n - 1));  // past the window: ignored
      }
    }
  }
  out.drafter.position_ids = positions_from_groups(out.group_ids);
  return out;
}

ParallelSpecStep parallel_spec_step(const std::vector<Batch>& windows, int64_t masks, int64_t anchors,
                                    int32_t first_mask_id, int32_t ignore_index, int64_t max_positions, Device device) {
  ParallelSpecStep step;
  for (const Batch& window : windows) {
    ParallelSpecRows r = parallel_spec_rows(window, masks, anchors, first_mask_id, ignore_index);
    auto ctx = std::make_shared<StepContext>();
    ctx->position_ids = r.drafter.position_ids;
    ctx->mask.group_ids = r.group_ids;
    check_step_context(*ctx, r.group_ids.size(0), r.group_ids.size(1), max_positions, "distill parallelspec");
    ctx->to(device);
    step.rows.push_back(std::move(r.drafter));
    step.contexts.push_back(std::move(ctx));
    step.teacher_slots.push_back(r.teacher_slots.to(device));
  }
  return step;
}

}  // namespace anvil
