#include "trainer/batch_context.h"

namespace anvil {

std::shared_ptr<StepContext> make_step_context(const Batch& batch, int64_t max_positions, Device device) {
  if (!batch.segment_ids.defined() && !batch.position_ids.defined()) return nullptr;
  ANVIL_CHECK(batch.ids.defined() && batch.ids.dim() == 2, "make_step_context: the batch's ids must be [B, T], got ",
              batch.ids.describe());
  auto ctx = std::make_shared<StepContext>();
  ctx->position_ids = batch.position_ids;
  ctx->mask.segment_ids = batch.segment_ids;
  check_step_context(*ctx, batch.ids.size(0), batch.ids.size(1), max_positions, "make_step_context");
  ctx->to(device);
  return ctx;
}

}  // namespace anvil
