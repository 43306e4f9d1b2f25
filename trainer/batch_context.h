// From a loader Batch to the StepContext its forward/backward read (models/step_context.h):
// the bridge between data/ (which knows no model) and models/ (which knows no loader).
#pragma once
#include <memory>

#include "data/loader.h"
#include "models/step_context.h"

namespace anvil {

// The micro-batch's context: Batch::segment_ids (document boundaries) and Batch::position_ids,
// checked on the host against ids [B, T] and max_positions, then moved to `device`. Null when
// the batch carries neither (data.packing: none), so a caller that sets nothing on its Cache
// keeps today's path. Under sequence parallelism pass the rank's slice (sequence_slice the
// position ids like ids and targets); packed documents are refused there by the config and by
// attention.
std::shared_ptr<StepContext> make_step_context(const Batch& batch, int64_t max_positions, Device device);

}  // namespace anvil
