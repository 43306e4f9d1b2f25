// Running a transformer block under per-sequence Dr.LLM actions (models/drllm_router.h):
// row b of the batch is skipped (y = x), executed (y = block(x)) or repeated
// (y = block(block(x))). Real skipping: each pass of the block runs only on the rows that need
// it, so a half-skipped batch computes about half.
//   - Without a KV cache the rows of a pass are gathered into one compact batch (with their
//     position ids and mask rows), computed, and scattered back.
//   - With a KV cache each maximal run of adjacent rows that share an action is one call on views
//     of those rows' K/V (no cache rows are copied); a repeat's second pass writes its own KV layer
//     (KVCache::repeat_layer), so its keys are those a full recompute of block(block(x)) makes.
#pragma once
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "models/step_context.h"

namespace anvil {

class TransformerBlock;
struct KVLayer;

// Rows `rows` (ascending) of x along dim 0, as a new contiguous tensor (x's dtype and device).
Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& rows);
// dst's rows `rows` = src's rows 0, 1, ... (dst and src alike but for dim 0).
void scatter_rows(Tensor& dst, const Tensor& src, const std::vector<int64_t>& rows);
// ctx with its per-row tensors (position ids, document and drafting-group ids) cut to `rows`.
std::shared_ptr<StepContext> context_rows(const StepContext& ctx, const std::vector<int64_t>& rows);

// x [B, T, hidden] under actions[b] (BlockAction values); ctx: the micro-batch's context. Saves
// nothing for a backward (Dr.LLM trains its routers on detached inputs; the backbone is frozen).
Tensor forward_block_actions(TransformerBlock& block, const Tensor& x, const std::vector<int32_t>& actions,
                             const StepContext& ctx);

// KV-cached decoding of x [B, T_new, hidden] under actions[b]: kv is the layer's KV cache,
// repeat_kv its repeat pass's (needed only when some row repeats), start as TransformerBlock::forward_cached.
Tensor forward_block_actions_cached(TransformerBlock& block, const Tensor& x, const std::vector<int32_t>& actions,
                                    KVLayer& kv, KVLayer* repeat_kv, int64_t start);

}  // namespace anvil
